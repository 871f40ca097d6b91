"""`leitstand bench operator`: pods bound per second by `leitstand run`, next to a raw create+bind loop.

One run on the local cluster (started here with `--nodes` simulated 8-GPU nodes unless one is running
from `--run`), two paths over the same workloads, side by side:

* **raw ceiling**: a plain loop with the operator's own client (`service.kubeclient.KubeClient`, same
  in-flight bound as the binder, authenticated as `leitstand-operator`, so kube-apiserver's priority
  and fairness treats it as it treats the operator) that creates pods of exactly the shape the operator
  makes (`service.jobs.replica_pod`, minus the owner reference: there is no TrainingJob to own them)
  and binds them round-robin through `pods/binding`. No scheduling, no status, no Events.
* **Leitstand**: `leitstand run` as a child process (`service.launcher`, identity `leitstand-operator`,
  started for the phase once the raw loop is done and stopped after it), TrainingJobs submitted by a
  concurrent admin client; the operator turns them into bound pods.

Workloads, each on an empty cluster (everything is deleted, and gone, between phases):

1. `--single` one-GPU TrainingJobs (1,000 by default: they all fit on 256 × 8 GPUs);
2. `--gangs` gangs of `--gang-replicas` × `--gang-gpus` (100 × 8 × 8 = 6,400 GPUs by default). They do
   not fit at once on 2,048 GPUs, so all of them are submitted and the phase is timed until the gangs
   that fit (32 by default, 256 pods) are bound; the rest must stay Pending (checked and reported).
   The raw loop binds the same number of pods of the same shape.

Measured per phase: wall time from the first submission to the moment the pods that fit are all bound
at once (one watch on the namespace, as admin; a pod the operator deletes again leaves the count),
pods bound per second, per-pod latency from the object's creation (the TrainingJob's, or the raw
pod's: the moment its POST returned) to the bind seen in the watch, the CPU seconds of every process
over that window (/proc: the operator and its main thread, kube-apiserver, etcd, kwok,
kube-controller-manager, this client, irq, and the rest of the machine, which on a shared VM is other
people's work: the load in the second before each phase is reported too), kube-apiserver's priority
and fairness counters and request counts by verb and resource, and, for the operator, its cycle log
lines ("cycle N: ... phase=ms") and how long until every placed TrainingJob shows phase Running.
`--profile FILE` runs the operator's main thread under cProfile (enabled and dumped by SIGUSR1/SIGUSR2
around each operator phase through a `sitecustomize` on its PYTHONPATH; no service code is changed),
one file per phase (`FILE-single.prof`, `FILE-gangs.prof`), and prints where its time goes; the CPU
numbers of such a run are inflated by the profiler.

Numbers only: nothing is asserted. Everything this command starts is stopped by PID at the end (the
cluster too, if it started it, unless `--keep-cluster`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from leitstand.operator.service.kubeclient import KubeClient
    from leitstand.operator.service.launcher import OperatorProcess

NAMESPACE = "leitstand-bench"
QUEUE = "leitstand-bench"
TJ_API = "/apis/leitstand.dev/v1alpha1"
GPU_RESOURCE = "nvidia.com/gpu"
JOB_LABEL = "leitstand.dev/job"
"""= service.records.JOB_LABEL (not imported: this module's top stays import-light)."""
GOAL_PERCENT = 80.0
IDENTITY = "leitstand-bench"
PROFILE_ENV = "LEITSTAND_BENCH_PROFILE"
CLUSTER_PROCESSES = ("kube-apiserver", "etcd", "kwok", "kube-controller-manager", "kube-scheduler")

Report = Callable[[str], None]


# --------------------------------------------------------------------------------------------------
# Options and the workload plan (pure)


@dataclass(frozen=True, slots=True)
class Options:
    nodes: int = 256
    single: int = 1000
    gangs: int = 100
    gang_replicas: int = 8
    gang_gpus: int = 8
    concurrency: int = 64
    timeout: float = 600.0
    run: Path | None = None
    keep_cluster: bool = False
    skip_raw: bool = False
    floor: bool = True
    """Also time the TrainingJob floor: the requests any TrainingJob operator must make, no scheduling."""
    profile: Path | None = None
    log_dir: Path | None = None
    api_costs: int = 1000
    """Requests per kind in the API cost probe (0 skips it)."""


NODE_GPUS = 8
"""GPUs per node of the cluster this command starts (the default B200 pool)."""


def check_options(opts: Options) -> None:
    """Raise ValueError naming the option when the combination cannot run; no cluster is touched."""
    if opts.nodes < 1:
        raise ValueError(f"--nodes {opts.nodes}: need at least 1 node")
    if opts.single < 0 or opts.gangs < 0:
        raise ValueError("--single and --gangs must be >= 0")
    if opts.single == 0 and opts.gangs == 0:
        raise ValueError("nothing to measure: --single and --gangs are both 0")
    if opts.gang_replicas < 1:
        raise ValueError(f"--gang-replicas {opts.gang_replicas}: must be >= 1")
    if not 1 <= opts.gang_gpus <= NODE_GPUS:
        raise ValueError(f"--gang-gpus {opts.gang_gpus}: a replica must fit one {NODE_GPUS}-GPU node (1..{NODE_GPUS})")
    if opts.concurrency < 1:
        raise ValueError(f"--concurrency {opts.concurrency}: must be >= 1")
    if opts.api_costs < 0:
        raise ValueError(f"--api-costs {opts.api_costs}: must be >= 0 (0 skips the probe)")
    if not opts.timeout > 0:
        raise ValueError(f"--timeout {opts.timeout}: must be > 0 seconds")


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    """"single" or "gangs"."""
    jobs: int
    replicas: int
    gpus: int
    fit_jobs: int
    """Jobs that fit at once on the empty cluster (all of them are submitted)."""
    note: str

    @property
    def fit_pods(self) -> int:
        return self.fit_jobs * self.replicas

    def job_name(self, index: int) -> str:
        return f"{'s' if self.name == 'single' else 'g'}-{index:04d}"


def plan_workloads(node_gpus: Sequence[int], opts: Options) -> list[Workload]:
    """The phases to run on nodes with these GPU counts; gangs beyond capacity are submitted, not timed."""
    total = sum(node_gpus)
    plans: list[Workload] = []
    if opts.single:
        fit = min(opts.single, total)
        note = f"{opts.single} one-GPU jobs on {total} GPUs" + (
            ": all fit at once" if fit == opts.single else f": {fit} fit at once, the rest stay Pending"
        )
        plans.append(Workload("single", opts.single, 1, 1, fit, note))
    if opts.gangs:
        slots = sum(g // opts.gang_gpus for g in node_gpus)
        fit = min(opts.gangs, slots // opts.gang_replicas)
        asked = opts.gangs * opts.gang_replicas * opts.gang_gpus
        note = (
            f"{opts.gangs} gangs of {opts.gang_replicas}×{opts.gang_gpus} GPUs = {asked} GPUs on {total} GPUs: "
            + (
                "all fit at once"
                if fit == opts.gangs
                else f"{fit} gangs ({fit * opts.gang_replicas} pods) fit at once; all {opts.gangs} are submitted, "
                f"the phase is timed until those {fit} are bound and the other {opts.gangs - fit} must stay Pending"
            )
        )
        plans.append(Workload("gangs", opts.gangs, opts.gang_replicas, opts.gang_gpus, fit, note))
    return plans


def trainingjob(name: str, replicas: int, gpus: int, namespace: str = NAMESPACE, queue: str = QUEUE) -> dict[str, Any]:
    """The benchmark's TrainingJob: long-running (no sim-duration), no topology requirement."""
    return {
        "apiVersion": "leitstand.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "queue": queue,
            "replicas": replicas,
            "gpus": gpus,
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "leitstand-bench"}},
                "spec": {
                    "containers": [
                        {
                            "name": "trainer",
                            "image": "registry.example/leitstand/train:latest",
                            "command": ["python", "-m", "train"],
                            "env": [{"name": "BENCH", "value": "1"}],
                            "resources": {"requests": {"cpu": "4", "memory": "16Gi"}},
                        }
                    ]
                },
            },
        },
    }


def raw_pods(
    workload: Workload, nodes: Sequence[tuple[str, int]], prefix: str = "raw-"
) -> list[tuple[str, str, dict[str, Any]]]:
    """(pod name, node, manifest) for the raw loop: the operator's replica pods of the jobs that fit,
    placed round-robin over `nodes` ((name, GPUs) pairs). Made by `service.jobs.replica_pod` from the
    same TrainingJob body, so labels, annotations and the container are exactly the operator's; the
    owner reference is dropped (no TrainingJob exists, and the garbage collector would delete them)."""
    from leitstand.operator.service.config import ServiceConfig
    from leitstand.operator.service.jobs import PriorityClassInfo, new_attempt, parse_trainingjob, replica_pod
    from leitstand.scheduler.model import NodeName, ReplicaPlacement

    config = ServiceConfig()
    levels = tuple(level.name for level in config.topology)
    priority = PriorityClassInfo(value=50, preemptible=True)  # deploy/priorityclasses.yaml: leitstand-train
    used = [0] * len(nodes)
    out: list[tuple[str, str, dict[str, Any]]] = []
    slot = 0
    for j in range(workload.fit_jobs):
        body = trainingjob(prefix + workload.job_name(j), workload.replicas, workload.gpus)
        body["metadata"].update(uid=f"00000000-0000-0000-0000-{j:012d}", creationTimestamp="2026-01-01T00:00:00Z")
        spec = parse_trainingjob(body, levels)
        attempt = new_attempt()
        for i in range(workload.replicas):
            for _ in range(len(nodes)):  # round-robin, skipping nodes without room
                n = slot % len(nodes)
                slot += 1
                if used[n] + workload.gpus <= nodes[n][1]:
                    break
            gpus = tuple(range(used[n], used[n] + workload.gpus))
            used[n] += workload.gpus
            node = nodes[n][0]
            manifest = replica_pod(spec, i, ReplicaPlacement(NodeName(node), gpus), priority, config.scheduler_name,
                                   attempt)
            manifest["metadata"].pop("ownerReferences", None)
            out.append((manifest["metadata"]["name"], node, manifest))
    return out


# --------------------------------------------------------------------------------------------------
# Statistics, log and metrics parsing (pure)


def percentiles(values: Iterable[float]) -> dict[str, float]:
    """n, p50, p90, p99 and max (linear interpolation, as numpy's default); NaN-free: {} when empty."""
    data = sorted(values)
    if not data:
        return {}

    def at(q: float) -> float:
        pos = q * (len(data) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(data) - 1)
        return data[lo] + (data[hi] - data[lo]) * (pos - lo)

    return {"n": len(data), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": data[-1]}


_CYCLE = re.compile(r"cycle (\S+): (\d+) bound, (\d+) evicted, (\d+) pending, (\d+) running; (.*)$")
_PHASE = re.compile(r"(\w+)=([0-9.]+)ms")
TOP_PHASES = ("observe", "follow", "decide", "apply", "status")


def cycle_summary(log_text: str) -> dict[str, Any]:
    """Sum the operator's INFO cycle lines (cycles that bound or evicted something; quiet cycles log at
    DEBUG and are not seen here): count, jobs bound, evictions, ms per phase, longest cycle."""
    cycles = binds = evictions = 0
    phase_ms: Counter[str] = Counter()
    longest = 0.0
    last_pending = 0
    for line in log_text.splitlines():
        match = _CYCLE.search(line)
        if not match:
            continue
        cycles += 1
        binds += int(match.group(2))
        evictions += int(match.group(3))
        last_pending = int(match.group(4))
        phases = {name: float(ms) for name, ms in _PHASE.findall(match.group(6))}
        phase_ms.update(phases)
        longest = max(longest, sum(phases.get(p, 0.0) for p in TOP_PHASES))
    total = sum(phase_ms.get(p, 0.0) for p in TOP_PHASES)
    return {
        "cycles": cycles,
        "jobs_bound": binds,
        "evictions": evictions,
        "last_pending": last_pending,
        "cycle_ms_total": round(total, 1),
        "cycle_ms_max": round(longest, 1),
        "phase_ms": {k: round(v, 1) for k, v in sorted(phase_ms.items(), key=lambda kv: -kv[1])},
    }


_METRIC = re.compile(r"^(apiserver_[a-z_]+)\{([^}]*)\} ([0-9.eE+-]+|NaN|\+Inf)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')
_FLOW_METRICS = {
    "apiserver_flowcontrol_dispatched_requests_total": "dispatched",
    "apiserver_flowcontrol_rejected_requests_total": "rejected",
    "apiserver_flowcontrol_request_wait_duration_seconds_sum": "wait_seconds",
    "apiserver_flowcontrol_request_wait_duration_seconds_count": "waited",
}


def flowcontrol(metrics_text: str) -> dict[str, Any]:
    """From kube-apiserver's /metrics: per (flow schema, priority level) the counters of priority and
    fairness, the seats of each priority level, and requests by "VERB resource[/subresource] code"."""
    flows: dict[str, dict[str, float]] = {}
    seats: dict[str, dict[str, float]] = {}
    requests: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if not line.startswith(("apiserver_flowcontrol_", "apiserver_request_total{")):
            continue
        match = _METRIC.match(line)
        if not match:
            continue
        name, labels_text, value = match.groups()
        labels = dict(_LABEL.findall(labels_text))
        try:
            number = float(value)
        except ValueError:
            continue
        if name == "apiserver_request_total":
            if labels.get("resource"):
                sub = labels.get("subresource")
                resource = labels["resource"] + (f"/{sub}" if sub else "")
                key = f"{labels.get('verb')} {resource} {labels.get('code')}"
                requests[key] = requests.get(key, 0.0) + number
        elif name in _FLOW_METRICS and "flow_schema" in labels:
            if name.startswith("apiserver_flowcontrol_request_wait") and labels.get("execute") != "true":
                continue
            key = f"{labels['flow_schema']}/{labels.get('priority_level', '')}"
            entry = flows.setdefault(key, {})
            metric = _FLOW_METRICS[name]
            entry[metric] = entry.get(metric, 0.0) + number
        elif name in ("apiserver_flowcontrol_nominal_limit_seats", "apiserver_flowcontrol_current_limit_seats"):
            level = labels.get("priority_level", "")
            seats.setdefault(level, {})[name.removeprefix("apiserver_flowcontrol_").removesuffix("_limit_seats")] = (
                number
            )
    return {"flows": flows, "seats": seats, "requests": requests}


def request_delta(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, int]:
    """Requests served between two snapshots (all clients), by "VERB resource[/subresource] code"."""
    b, a = before.get("requests", {}), after.get("requests", {})
    delta = {k: round(v - b.get(k, 0.0)) for k, v in a.items()}
    return dict(sorted(((k, v) for k, v in delta.items() if v > 0), key=lambda kv: -kv[1]))


def flow_delta(before: Mapping[str, Any], after: Mapping[str, Any], flow: str) -> dict[str, float]:
    """What one flow ("flow schema/priority level") did between two `flowcontrol` snapshots."""
    b = before.get("flows", {}).get(flow, {})
    a = after.get("flows", {}).get(flow, {})
    delta = {k: a.get(k, 0.0) - b.get(k, 0.0) for k in ("dispatched", "rejected", "wait_seconds", "waited")}
    waited = delta.pop("waited")
    wait = delta.pop("wait_seconds")
    delta["mean_wait_ms"] = round(1000 * wait / waited, 3) if waited else 0.0
    return delta


def apiserver_flags(cmdline: Sequence[str]) -> dict[str, str]:
    """The flags that decide concurrency and priority and fairness, with kube-apiserver's defaults."""
    flags = {
        "--enable-priority-and-fairness": "true (default)",
        "--max-requests-inflight": "400 (default)",
        "--max-mutating-requests-inflight": "200 (default)",
    }
    for arg in cmdline:
        name, _, value = arg.partition("=")
        if name in flags:
            flags[name] = value
    return flags


# --------------------------------------------------------------------------------------------------
# Results and the report (pure)


@dataclass
class PhaseResult:
    workload: str
    path: str
    """"raw", "floor" or "leitstand"."""
    jobs_submitted: int
    pods_expected: int
    pods_bound: int = 0
    complete: bool = False
    wall_seconds: float = 0.0
    submit_seconds: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    """Object created (TrainingJob, or raw pod) → pod seen bound."""
    pod_created_to_bound_ms: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    operator_threads: dict[str, float] = field(default_factory=dict)
    machine_busy_seconds: float = 0.0
    cores: int = 1
    apf: dict[str, float] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)
    """Every client's requests in the window (kube-apiserver's apiserver_request_total)."""
    cycles: dict[str, Any] = field(default_factory=dict)
    client_errors: dict[str, int] = field(default_factory=dict)
    bound_after_settle: int | None = None
    pods_created: int = 0
    """Pod ADDED events in the window (more than `pods_bound`: pods deleted and made again)."""
    binds_seen: int = 0
    """Pods seen going from unbound to bound (more than `pods_bound`: bound pods deleted and made again)."""
    bound_pods_deleted: int = 0
    job_phases: dict[str, int] = field(default_factory=dict)
    operator_rss_mib: float | None = None
    background_cores: float = 0.0
    """CPU the rest of the machine used in the second before the phase (other people's processes)."""
    idle_cluster_cores: float = 0.0
    """CPU the idle cluster (apiserver, etcd, kwok heartbeats, controller-manager) used in that second."""
    status_seconds: float | None = None
    """First submission → every TrainingJob that fits shows phase Running (None: not within --timeout)."""
    operator_log: str | None = None

    @property
    def pods_per_second(self) -> float:
        return self.pods_bound / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def cpu_ms_per_pod(self) -> float:
        """CPU of the cluster, the operator and this client per pod bound (the rest of the machine left out)."""
        ours = sum(v for k, v in self.cpu_seconds.items() if k != "other")
        return 1000 * ours / self.pods_bound if self.pods_bound else 0.0

    @property
    def cpu_bound_rate(self) -> float:
        """Pods/s if those CPU costs alone filled every core: a projection for an otherwise idle machine."""
        return 1000 * self.cores / self.cpu_ms_per_pod if self.cpu_ms_per_pod else 0.0


def summarize(results: Sequence[PhaseResult]) -> dict[str, Any]:
    """Rates per phase and overall, Leitstand's rate as % of the raw loop's on the same workload, and
    both the floor's and Leitstand's as % of the raw loop's and Leitstand's as % of the floor's."""
    rows = []
    by_key = {(r.workload, r.path): r for r in results}
    ratios: dict[str, float | None] = {}
    cpu_ratios: dict[str, float] = {}
    floor_ratios: dict[str, dict[str, float]] = {}
    for r in results:
        row = asdict(r)
        row["pods_per_second"] = round(r.pods_per_second, 1)
        row["cpu_ms_per_pod"] = round(r.cpu_ms_per_pod, 2)
        row["cpu_bound_rate"] = round(r.cpu_bound_rate, 1)
        rows.append(row)
    for workload in dict.fromkeys(r.workload for r in results):
        raw, ours = by_key.get((workload, "raw")), by_key.get((workload, "leitstand"))
        ratios[workload] = (
            round(100 * ours.pods_per_second / raw.pods_per_second, 1)
            if raw and ours and raw.pods_per_second > 0
            else None
        )
        if raw and ours and raw.cpu_bound_rate > 0:
            cpu_ratios[workload] = round(100 * ours.cpu_bound_rate / raw.cpu_bound_rate, 1)
        floor = by_key.get((workload, "floor"))
        if floor and floor.pods_per_second > 0:
            floor_ratios[workload] = {}
            if raw and raw.pods_per_second > 0:
                floor_ratios[workload]["floor_of_raw"] = round(100 * floor.pods_per_second / raw.pods_per_second, 1)
            if ours:
                floor_ratios[workload]["leitstand_of_floor"] = round(
                    100 * ours.pods_per_second / floor.pods_per_second, 1)
    totals: dict[str, dict[str, float]] = {}
    for path in ("raw", "floor", "leitstand"):
        mine = [r for r in results if r.path == path]
        if mine:
            pods = sum(r.pods_bound for r in mine)
            wall = sum(r.wall_seconds for r in mine)
            totals[path] = {"pods_bound": pods, "wall_seconds": round(wall, 3),
                            "pods_per_second": round(pods / wall, 1) if wall > 0 else 0.0}
    if "raw" in totals and "leitstand" in totals and totals["raw"]["pods_per_second"] > 0:
        ratios["all"] = round(100 * totals["leitstand"]["pods_per_second"] / totals["raw"]["pods_per_second"], 1)
    if "floor" in totals and totals["floor"]["pods_per_second"] > 0:
        floor_ratios["all"] = {}
        if "raw" in totals and totals["raw"]["pods_per_second"] > 0:
            floor_ratios["all"]["floor_of_raw"] = round(
                100 * totals["floor"]["pods_per_second"] / totals["raw"]["pods_per_second"], 1)
        if "leitstand" in totals:
            floor_ratios["all"]["leitstand_of_floor"] = round(
                100 * totals["leitstand"]["pods_per_second"] / totals["floor"]["pods_per_second"], 1)
    return {"phases": rows, "totals": totals, "ratio_percent": ratios, "cpu_bound_ratio_percent": cpu_ratios,
            "floor_ratio_percent": floor_ratios, "goal_percent": GOAL_PERCENT}


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


CPU_COLUMNS = ("leitstand run", "kube-apiserver", "etcd", "kwok", "kube-controller-manager", "bench client",
               "irq+softirq", "other")


def render(report: Mapping[str, Any], console: Console) -> None:
    """The tables: throughput and latency, CPU seconds per process, the operator's cycles and APF."""
    from rich.table import Table

    cluster = report["cluster"]
    console.print(
        f"[bold]leitstand bench operator[/]: {cluster['nodes']} nodes, {cluster['gpus']} GPUs, "
        f"Kubernetes {cluster.get('kubernetes', '?')}, {cluster['cores']} cores; client concurrency "
        f"{report['concurrency']}"
    )
    code = report.get("code") or {}
    if code:
        changed = code.get("operator_service_changed") or []
        dirty = f" + uncommitted {', '.join(changed)}" if changed else ""
        console.print(f"code: commit {code.get('commit')}{dirty}")
    for note in report["workload_notes"]:
        console.print(f"  • {note}")
    ratios = report["ratio_percent"]
    cpu_ratios = report.get("cpu_bound_ratio_percent", {})
    table = Table(title="pods bound per second (first submission → last pod bound)")
    floors = report.get("floor_ratio_percent") or {}
    for column in ("workload", "path", "jobs", "pods bound", "wall s", "submit s", "pods/s", "% of raw",
                   "% of floor", "p50 ms", "p99 ms", "pod made→bound p50"):
        table.add_column(column, justify="right" if column not in ("workload", "path") else "left")
    for row in report["phases"]:
        ours = row["path"] == "leitstand"
        floor = floors.get(row["workload"], {})
        ratio = ratios.get(row["workload"]) if ours else floor.get("floor_of_raw") if row["path"] == "floor" else None
        of_floor = floor.get("leitstand_of_floor") if ours else None
        lat, made = row["latency_ms"], row["pod_created_to_bound_ms"]
        bound = f"{row['pods_bound']}/{row['pods_expected']}" + ("" if row["complete"] else " (timeout)")
        table.add_row(
            row["workload"], row["path"], str(row["jobs_submitted"]), bound, _fmt(row["wall_seconds"], 2),
            _fmt(row["submit_seconds"], 2), _fmt(row["pods_per_second"]),
            f"{ratio:.0f} %" if ratio is not None else "", f"{of_floor:.0f} %" if of_floor is not None else "",
            _fmt(lat.get("p50"), 0), _fmt(lat.get("p99"), 0),
            _fmt(made.get("p50"), 0),
        )
    every = floors.get("all", {})
    for path, total in report["totals"].items():
        ratio = ratios.get("all") if path == "leitstand" else every.get("floor_of_raw") if path == "floor" else None
        of_floor = every.get("leitstand_of_floor") if path == "leitstand" else None
        table.add_row("all", path, "", str(int(total["pods_bound"])), _fmt(total["wall_seconds"], 2), "",
                      _fmt(total["pods_per_second"]), f"{ratio:.0f} %" if ratio is not None else "",
                      f"{of_floor:.0f} %" if of_floor is not None else "", "", "", "")
    console.print(table)
    overall = ratios.get("all")
    if overall is not None:
        verdict = "meets" if overall >= report["goal_percent"] else "misses"
        console.print(f"Leitstand binds at {overall:.0f} % of the raw loop's rate overall ({verdict} the "
                      f"{report['goal_percent']:.0f} % goal).")
    if every.get("floor_of_raw") is not None:
        console.print(f"The TrainingJob floor (the tenant's TrainingJob, its pods and binds; one status write each "
                      f"after the last bind; no scheduling, no watch) reaches {every['floor_of_raw']:.0f} % of the raw "
                      "loop's rate: the most "
                      "any operator of TrainingJobs could reach here"
                      + (f"; Leitstand reaches {every['leitstand_of_floor']:.0f} % of the floor."
                         if every.get("leitstand_of_floor") is not None else "."))

    cpu = Table(title="CPU seconds over each phase's window (/proc utime+stime; other = the rest of the machine); "
                "client = leitstand run, or the bench process for the raw loop")
    short = {"kube-apiserver": "apiserver", "kube-controller-manager": "ctrl-mgr", "leitstand run": "leitstand run"}
    for column in ("workload", "path", *(short.get(c, c) for c in CPU_COLUMNS), "busy / capacity",
                   "client ms/pod", "apiserver ms/pod", "all ms/pod", "CPU-bound pods/s", "background cores"):
        cpu.add_column(column, justify="right" if column not in ("workload", "path") else "left")
    for row in report["phases"]:
        secs = row["cpu_seconds"]
        threads = row["operator_threads"]
        ours = row["path"] == "leitstand"
        op = _fmt(secs.get("leitstand run"), 2)
        if threads:
            op += f" ({_fmt(threads.get('main'), 2)} main)"
        capacity = row["cores"] * row["wall_seconds"]
        pods = row["pods_bound"] or 1
        cpu.add_row(
            row["workload"], row["path"], op if ours else "–",
            *(_fmt(secs.get(c), 2) for c in CPU_COLUMNS[1:]),
            f"{_fmt(row['machine_busy_seconds'], 2)} / {_fmt(capacity, 2)}",
            _fmt(1000 * secs.get("leitstand run" if ours else "bench client", 0.0) / pods, 2),
            _fmt(1000 * secs.get("kube-apiserver", 0.0) / pods, 2),
            _fmt(row["cpu_ms_per_pod"], 2),
            _fmt(row["cpu_bound_rate"]) + (f" ({cpu_ratios[row['workload']]:.0f} %)"
                                           if ours and row["workload"] in cpu_ratios else ""),
            _fmt(row["background_cores"], 2),
        )
    console.print(cpu)
    console.print("all ms/pod: CPU of the cluster processes, the operator, this client and irq per pod bound ('other' "
                  "left out); CPU-bound pods/s: cores × 1000 / all ms/pod, the rate if that work alone filled every "
                  "core of an otherwise idle machine (a projection, not a measurement).")

    ops = Table(title="API requests of the operator identity (APF flow global-default) and the operator's cycles")
    for column in ("workload", "path", "requests", "per pod", "429s", "mean APF wait ms", "cycles", "jobs bound",
                   "cycle ms total", "longest", "top phases (ms)"):
        ops.add_column(column, justify="right" if column not in ("workload", "path", "top phases (ms)") else "left")
    for row in report["phases"]:
        apf, cyc = row["apf"], row["cycles"]
        per_pod = apf.get("dispatched", 0) / row["pods_bound"] if row["pods_bound"] else None
        top = ", ".join(f"{k} {v:,.0f}" for k, v in list(cyc.get("phase_ms", {}).items())[:4])
        ops.add_row(
            row["workload"], row["path"], _fmt(apf.get("dispatched"), 0), _fmt(per_pod, 2),
            _fmt(apf.get("rejected"), 0), _fmt(apf.get("mean_wait_ms"), 2),
            str(cyc.get("cycles", "")), str(cyc.get("jobs_bound", "")),
            _fmt(cyc.get("cycle_ms_total")) if cyc else "", _fmt(cyc.get("cycle_ms_max")) if cyc else "", top,
        )
    console.print(ops)
    apf = report["apf"]
    console.print(
        f"APF: the operator identity maps to flow schema [bold]{apf.get('flow_schema')}[/] → priority level "
        f"[bold]{apf.get('priority_level')}[/] (nominal {_fmt(apf.get('nominal_seats'), 0)} seats, current "
        f"{_fmt(apf.get('current_seats'), 0)}); apiserver flags: "
        + ", ".join(f"{k}={v}" for k, v in apf.get("flags", {}).items())
    )
    for row in report["phases"]:
        if max(row["binds_seen"], row["pods_created"]) > row["pods_bound"] or row["bound_pods_deleted"]:
            console.print(
                f"[yellow]{row['workload']}/{row['path']}[/]: {row['pods_created']} pods created and "
                f"{row['binds_seen']} binds seen for {row['pods_bound']} pods bound; {row['bound_pods_deleted']} "
                "bound pods were deleted again (counted until the end of the settle time)"
            )
        if row["job_phases"]:
            states = ", ".join(f"{k} {v}" for k, v in sorted(row["job_phases"].items()))
            settled = row["bound_after_settle"]
            extra = "" if settled is None else f"; pods bound 3 s later: {settled}"
            took = row.get("status_seconds")
            extra += ("; every job that fits showed Running after " + (f"{took:.2f} s" if took is not None else
                      "(not within the timeout)"))
            console.print(f"{row['workload']}/{row['path']}: TrainingJobs {states}{extra}")
    if report.get("api_costs"):
        costs = Table(title="API cost probe: CPU per request, each kind timed alone, operator stopped")
        for column in ("request", "n", "wall s", "apiserver ms/req", "etcd ms/req", "ctrl-mgr ms/req"):
            costs.add_column(column, justify="left" if column == "request" else "right")
        for cost in report["api_costs"]:
            costs.add_row(cost["kind"], str(cost["requests"]), _fmt(cost["wall_seconds"], 2),
                          _fmt(cost["apiserver_ms"], 2), _fmt(cost["etcd_ms"], 2), _fmt(cost["kcm_ms"], 2))
        console.print(costs)
    for workload, prof in (report.get("profile") or {}).items():
        table = Table(title=f"{workload}: the operator's main thread under cProfile, {prof['busy_seconds']:.2f} s "
                      f"busy ({prof['file']}; profiling inflates it)")
        for column in ("function", "calls", "tottime s", "cumtime s"):
            table.add_column(column, justify="left" if column == "function" else "right")
        for entry in prof["top_tottime"][:15]:
            table.add_row(entry["function"], str(entry["calls"]), f"{entry['tottime']:.3f}", f"{entry['cumtime']:.3f}")
        console.print(table)
        cum = Table(title=f"{workload}: ... by cumulative time (leitstand, aiohttp and kopf frames)")
        for column in ("function", "calls", "tottime s", "cumtime s"):
            cum.add_column(column, justify="left" if column == "function" else "right")
        for entry in prof["top_cumtime"][:15]:
            cum.add_row(entry["function"], str(entry["calls"]), f"{entry['tottime']:.3f}", f"{entry['cumtime']:.3f}")
        console.print(cum)
    logs = [row["operator_log"] for row in report["phases"] if row.get("operator_log")]
    if logs:
        console.print(f"operator logs: {', '.join(logs)}")


# --------------------------------------------------------------------------------------------------
# /proc sampling


def _machine_seconds() -> tuple[float, float]:
    """(busy, irq + softirq) CPU seconds of the whole machine since boot, from /proc/stat."""
    first = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    ticks = [int(x) for x in first]  # user nice system idle iowait irq softirq steal
    clock = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - ticks[3] - ticks[4]) / clock, (ticks[5] + ticks[6]) / clock


def _thread_split(pid: int) -> dict[str, float]:
    """CPU of the main thread (the event loop: informers, cycle, binder) and of all other threads (kopf)."""
    clock = os.sysconf("SC_CLK_TCK")
    main = other = 0.0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {}
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        seconds = (int(fields[11]) + int(fields[12])) / clock
        if int(tid) == pid:
            main += seconds
        else:
            other += seconds
    return {"main": main, "other": other}


@dataclass
class CpuSample:
    processes: dict[str, float]
    threads: dict[str, float]
    machine: float
    irq: float = 0.0


class CpuSampler:
    def __init__(self, cluster_pids: Mapping[str, int]) -> None:
        self.cluster_pids = dict(cluster_pids)
        self.operator_pid: int | None = None

    def sample(self) -> CpuSample:
        from leitstand.operator.service.launcher import process_cpu_seconds

        processes = {name: process_cpu_seconds(pid) for name, pid in self.cluster_pids.items()}
        processes["bench client"] = time.process_time()
        threads: dict[str, float] = {}
        if self.operator_pid is not None:
            processes["leitstand run"] = process_cpu_seconds(self.operator_pid)
            threads = _thread_split(self.operator_pid)
        busy, irq = _machine_seconds()
        return CpuSample(processes, threads, busy, irq)

    @staticmethod
    def delta(a: CpuSample, b: CpuSample) -> tuple[dict[str, float], dict[str, float], float]:
        processes = {k: round(b.processes.get(k, 0.0) - v, 3) for k, v in a.processes.items()}
        busy = round(b.machine - a.machine, 3)
        processes["irq+softirq"] = round(b.irq - a.irq, 3)
        processes["other"] = round(busy - sum(processes.values()), 3)
        threads = {k: round(b.threads.get(k, 0.0) - v, 3) for k, v in a.threads.items()}
        return processes, threads, busy


# --------------------------------------------------------------------------------------------------
# The watch that sees pods bound


class PodWatch:
    """One watch on the benchmark namespace (as admin): which pods are bound now, and since when.

    `bound` holds only live bound pods: a pod that is deleted (or gets a deletionTimestamp) after its
    bind leaves it, and a pod made again under the same name starts over. So "all bound" means all
    bound at the same moment, and a rollback by the operator is counted (`unbound`), not hidden."""

    def __init__(self, client: KubeClient, namespace: str = NAMESPACE) -> None:
        self.client = client
        self.path = f"/api/v1/namespaces/{namespace}/pods"
        self.seen: dict[str, float] = {}
        """Pod name → when its current incarnation was first seen (ADDED)."""
        self.bound: dict[str, float] = {}
        """Pod name → when it was seen bound, for pods bound and not being deleted."""
        self.job: dict[str, str] = {}
        """Pod name → its `leitstand.dev/job` label (the operator's pods and the raw loop's)."""
        self.added = 0
        """ADDED events: pods created (a pod deleted and made again counts twice)."""
        self.binds = 0
        self.unbound = 0
        """Bound pods that were deleted (or got a deletionTimestamp) while the watch ran."""
        self.deleted = 0
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None

    async def start(self) -> None:
        body = await self.client.get(self.path, params={"limit": 1})
        self.task = asyncio.create_task(self._run(str(body["metadata"]["resourceVersion"])))

    def on_event(self, kind: str, obj: Mapping[str, Any], now: float) -> None:
        meta = obj.get("metadata") or {}
        name = str(meta.get("name"))
        if kind == "DELETED":
            self.deleted += 1
            if self.bound.pop(name, None) is not None:
                self.unbound += 1
            return
        if kind == "ADDED":
            self.added += 1
            self.seen[name] = now
            self.bound.pop(name, None)
            self.job[name] = str((meta.get("labels") or {}).get(JOB_LABEL, name))
        elif kind != "MODIFIED":
            return
        self.seen.setdefault(name, now)
        if meta.get("deletionTimestamp"):
            if self.bound.pop(name, None) is not None:
                self.unbound += 1
            return
        if (obj.get("spec") or {}).get("nodeName") and name not in self.bound:
            self.bound[name] = now
            self.binds += 1
            self.changed.set()

    async def _run(self, rv: str) -> None:
        try:
            while True:
                params = {"watch": "1", "resourceVersion": rv, "allowWatchBookmarks": "true",
                          "timeoutSeconds": "3600"}
                async with contextlib.aclosing(self.client.watch_stream(self.path, params)) as events:
                    async for event in events:
                        obj = event.get("object") or {}
                        rv = str((obj.get("metadata") or {}).get("resourceVersion", rv))
                        self.on_event(str(event.get("type")), obj, time.monotonic())
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # surfaced by wait_bound
            self.error = exc
            self.changed.set()

    def bound_count(self, replicas: int) -> int:
        """Live bound pods, at most `replicas` per job (an old and a new pod of one job count once)."""
        per_job = Counter(self.job.get(name, name) for name in self.bound)
        return sum(min(n, replicas) for n in per_job.values())

    async def wait_bound(self, count: int, replicas: int, deadline: float, progress: Report | None = None) -> bool:
        next_report = time.monotonic() + 5
        while self.bound_count(replicas) < count:
            if self.error is not None:
                raise RuntimeError(f"the pod watch failed: {self.error!r}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=min(remaining, 1.0))
            if progress and time.monotonic() >= next_report:
                progress(f"    {self.bound_count(replicas)}/{count} pods bound")
                next_report = time.monotonic() + 5
        return True

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


# --------------------------------------------------------------------------------------------------
# The cluster side: install, clean, metrics


async def install(admin: KubeClient, total_gpus: int, deadline_seconds: float = 60.0) -> None:
    """deploy/namespace.yaml, crds/, priorityclasses.yaml, rbac/ (existing objects are kept), the
    benchmark namespace with its default ServiceAccount, and one Queue holding every GPU."""
    from leitstand.operator.cluster.credentials import load_manifests
    from leitstand.operator.cluster.kubeapi import collection_path
    from leitstand.operator.cluster.layout import repo_root

    deploy = repo_root() / "deploy"
    files = [deploy / "namespace.yaml", *sorted((deploy / "crds").glob("*.yaml")), deploy / "priorityclasses.yaml",
             *sorted((deploy / "rbac").glob("*.yaml"))]
    crds: list[str] = []
    for obj in load_manifests(files):
        status, body = await admin.request("POST", collection_path(obj), obj)
        if status not in (200, 201, 409):
            raise RuntimeError(f"creating {obj['kind']} {obj['metadata']['name']}: HTTP {status} {body}")
        if obj["kind"] == "CustomResourceDefinition":
            crds.append(obj["metadata"]["name"])
    deadline = time.monotonic() + deadline_seconds
    for name in crds:
        while True:
            crd = await admin.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            conditions = (crd.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"CRD {name} not Established after {deadline_seconds:.0f} s")
            await asyncio.sleep(0.2)
    status, body = await admin.request("POST", "/api/v1/namespaces",
                                       {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    if status not in (201, 409):
        raise RuntimeError(f"creating namespace {NAMESPACE}: HTTP {status} {body}")
    while (await admin.request("GET", f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/default"))[0] != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no ServiceAccount default in {NAMESPACE}: is kube-controller-manager running?")
        await asyncio.sleep(0.2)
    queue = {"apiVersion": "leitstand.dev/v1alpha1", "kind": "Queue", "metadata": {"name": QUEUE},
             "spec": {"gpu": {"quota": total_gpus}, "namespaces": [NAMESPACE]}}
    status, body = await admin.request("POST", f"{TJ_API}/queues", queue)
    if status == 409:
        await admin.patch_merge(f"{TJ_API}/queues/{QUEUE}", {"spec": queue["spec"]})
    elif status not in (200, 201):
        raise RuntimeError(f"creating Queue {QUEUE}: HTTP {status} {body}")


async def gpu_nodes(admin: KubeClient) -> list[tuple[str, int]]:
    """(name, allocatable GPUs) of the Ready nodes with GPUs, in name order."""
    body = await admin.get("/api/v1/nodes")
    out = []
    for node in body.get("items", []):
        status = node.get("status") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        gpus = int((status.get("allocatable") or {}).get(GPU_RESOURCE, 0) or 0)
        if ready and gpus and not (node.get("spec") or {}).get("unschedulable"):
            out.append((str(node["metadata"]["name"]), gpus))
    return sorted(out)


async def clean(admin: KubeClient, timeout_seconds: float = 300.0) -> None:
    """Delete every TrainingJob and pod of the benchmark namespace and wait until they are gone."""
    deadline = time.monotonic() + timeout_seconds
    tj_path = f"{TJ_API}/namespaces/{NAMESPACE}/trainingjobs"
    pods_path = f"/api/v1/namespaces/{NAMESPACE}/pods"
    while True:
        await admin.request("DELETE", tj_path, {"propagationPolicy": "Background"})
        await admin.request("DELETE", pods_path, {"gracePeriodSeconds": 0})
        for _ in range(50):
            tjs = await admin.get(tj_path, params={"limit": 1})
            pods = await admin.get(pods_path, params={"limit": 1})
            if not tjs.get("items") and not pods.get("items"):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"namespace {NAMESPACE} still has objects after {timeout_seconds:.0f} s")
            await asyncio.sleep(0.2)


async def metrics_snapshot(admin: KubeClient) -> dict[str, Any]:
    status, body = await admin.request("GET", "/metrics")
    return flowcontrol(body if status == 200 and isinstance(body, str) else "")


async def job_phases(admin: KubeClient) -> dict[str, int]:
    phases: Counter[str] = Counter()
    token = ""
    while True:
        params: dict[str, Any] = {"limit": 500}
        if token:
            params["continue"] = token
        body = await admin.get(f"{TJ_API}/namespaces/{NAMESPACE}/trainingjobs", params=params)
        for tj in body.get("items", []):
            status = tj.get("status") or {}
            phase = status.get("phase", "(none)")
            reason = status.get("reason")
            phases[f"{phase}/{reason}" if reason and reason != phase else phase] += 1
        token = (body.get("metadata") or {}).get("continue") or ""
        if not token:
            return dict(phases)


async def wait_statuses(admin: KubeClient, jobs: int, t0: float, deadline: float) -> float | None:
    """Seconds from `t0` until `jobs` TrainingJobs show phase Running (the status tenants read)."""
    while time.monotonic() < deadline:
        phases = await job_phases(admin)
        if sum(n for k, n in phases.items() if k.split("/")[0] == "Running") >= jobs:
            return round(time.monotonic() - t0, 3)
        await asyncio.sleep(0.25)
    return None


# --------------------------------------------------------------------------------------------------
# The two paths


async def _pool(items: Sequence[Any], workers: int, work: Callable[[Any], Awaitable[None]]) -> None:
    """Run `work` over `items` with `workers` concurrent workers (each takes the next item)."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def worker() -> None:
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await work(item)

    await asyncio.gather(*(worker() for _ in range(max(1, min(workers, len(items))))))


@dataclass
class Submission:
    started: float = 0.0
    finished: float = 0.0
    created: dict[str, float] = field(default_factory=dict)
    """Object name → when its POST returned (monotonic)."""
    errors: Counter[str] = field(default_factory=Counter)


async def _bind(client: KubeClient, name: str, node: str, sub: Submission) -> None:
    """POST the pod's binding to `node`, the request the binder makes (`service.binder`); a refusal is counted."""
    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "namespace": NAMESPACE},
               "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
    status, _ = await client.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods/{name}/binding", binding)
    if status not in (200, 201):
        sub.errors[f"bind {status}"] += 1


async def submit_raw(client: KubeClient, pods: Sequence[tuple[str, str, dict[str, Any]]], workers: int,
                     sub: Submission) -> None:
    """The raw ceiling: per pod, POST it, then POST its binding to the chosen node."""

    async def one(item: tuple[str, str, dict[str, Any]]) -> None:
        name, node, manifest = item
        status, _ = await client.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", manifest)
        if status != 201:
            sub.errors[f"create {status}"] += 1
            return
        sub.created[name] = time.monotonic()
        await _bind(client, name, node, sub)

    sub.started = time.monotonic()
    await _pool(pods, workers, one)
    sub.finished = time.monotonic()


FLOOR_PREFIX = "floor-"


async def submit_floor(admin: KubeClient, client: KubeClient, pods: Sequence[tuple[str, str, dict[str, Any]]],
                       workers: int, sub: Submission) -> None:
    """The TrainingJob floor: per job the requests any operator of TrainingJobs must make, and nothing
    else — the tenant's TrainingJob POST (admin, as in Leitstand's path), then as leitstand-operator
    its pods (owned by it, so the garbage collector follows them as it does ours) and their bindings to
    the chosen nodes; once every job is bound, one status merge-patch per job (Leitstand's one write
    per admission: Admitted and Running together), after the timed window as an operator that put
    every status write behind every bind would. No watch, no informer, no decision: an operator that
    cost nothing and knew the placement in advance. (A first version wrote each job's status before
    its worker took the next job: 1,000 status patches inside the window made it slower than
    Leitstand, whose status writes yield to binds.) `pods` are `raw_pods(workload, nodes,
    FLOOR_PREFIX)`: the same pods as the raw loop's; each job's TrainingJob asks for as many replicas
    as it has pods, each with its first pod's `nvidia.com/gpu` limit (`bench e2e` mixes shapes)."""
    from leitstand.operator.service.status import rfc3339

    per_job: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for item in pods:
        per_job.setdefault(str(item[2]["metadata"]["labels"][JOB_LABEL]), []).append(item)
    base = f"{TJ_API}/namespaces/{NAMESPACE}/trainingjobs"
    placed: dict[str, list[str]] = {}

    def gpus_of(job: str) -> int:
        return int(per_job[job][0][2]["spec"]["containers"][0]["resources"]["limits"][GPU_RESOURCE])

    async def one(job: str) -> None:
        replicas = per_job[job]
        status, body = await admin.request("POST", base, trainingjob(job, len(replicas), gpus_of(job)))
        if status != 201:
            sub.errors[f"create TrainingJob {status}"] += 1
            return
        owner = {"apiVersion": "leitstand.dev/v1alpha1", "kind": "TrainingJob", "name": job,
                 "uid": body["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
        nodes = []
        for name, node, manifest in replicas:
            manifest = {**manifest, "metadata": {**manifest["metadata"], "ownerReferences": [owner]}}
            status, _ = await client.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", manifest)
            if status != 201:
                sub.errors[f"create {status}"] += 1
                return
            sub.created[name] = time.monotonic()
            nodes.append(node)
        for name, node, _manifest in replicas:
            await _bind(client, name, node, sub)
        placed[job] = nodes

    async def write_status(job: str) -> None:
        nodes, replicas = placed[job], per_job[job]
        now = rfc3339()
        message = f"placed {len(replicas)} replicas on {', '.join(sorted(set(nodes)))}"
        running = f"{len(replicas)} replicas running"
        patch = {"status": {
            "phase": "Running", "reason": "Running", "message": running, "queuedAt": now, "admittedAt": now,
            "startedAt": now, "restarts": 0, "preemptions": 0, "gpus": str(len(replicas) * gpus_of(job)),
            "placement": {"nodes": sorted(set(nodes)), "nodeCount": len(set(nodes)), "level": "node",
                          "domain": nodes[0]},
            "conditions": [
                {"type": "Admitted", "status": "True", "reason": "Admitted", "message": message,
                 "lastTransitionTime": now},
                {"type": "Running", "status": "True", "reason": "Running", "message": running,
                 "lastTransitionTime": now}],
        }}
        status, _ = await client.request("PATCH", f"{base}/{job}/status", patch,
                                         content_type="application/merge-patch+json")
        if status != 200:
            sub.errors[f"status {status}"] += 1

    sub.started = time.monotonic()
    await _pool(list(per_job), workers, one)
    sub.finished = time.monotonic()
    await _pool(list(placed), workers, write_status)


async def submit_jobs(client: KubeClient, workload: Workload, workers: int, sub: Submission) -> None:
    """Leitstand's path: POST the TrainingJobs (as admin, concurrently); the operator does the rest."""

    async def one(index: int) -> None:
        name = workload.job_name(index)
        status, _ = await client.request("POST", f"{TJ_API}/namespaces/{NAMESPACE}/trainingjobs",
                                         trainingjob(name, workload.replicas, workload.gpus))
        if status != 201:
            sub.errors[f"create {status}"] += 1
            return
        sub.created[name] = time.monotonic()

    sub.started = time.monotonic()
    await _pool(list(range(workload.jobs)), workers, one)
    sub.finished = time.monotonic()


def latencies(sub: Submission, watch: PodWatch, owner: Callable[[str], str]) -> tuple[list[float], list[float]]:
    """(created → bound, pod seen → bound) in ms for every bound pod whose creating object is known."""
    made, seen = [], []
    for pod, at in watch.bound.items():
        start = sub.created.get(owner(pod))
        if start is not None:
            made.append(1000 * (at - start))
        first = watch.seen.get(pod)
        if first is not None:
            seen.append(1000 * (at - first))
    return made, seen


# --------------------------------------------------------------------------------------------------
# The profile hook (a sitecustomize in a private folder on the operator's PYTHONPATH)

_SITECUSTOMIZE = '''\
import os as _os
_path = _os.environ.get("LEITSTAND_BENCH_PROFILE")
if _path:
    import cProfile as _cp
    import signal as _signal
    _prof = _cp.Profile()

    def _start(signum, frame):
        _prof.enable()

    def _stop(signum, frame):
        _prof.disable()
        _prof.dump_stats(_path)

    _signal.signal(_signal.SIGUSR1, _start)
    _signal.signal(_signal.SIGUSR2, _stop)
'''


def profile_env(profile: Path, folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, PROFILE_ENV: str(profile)}


def profile_summary(path: Path, top: int = 30) -> dict[str, Any]:
    """The operator main thread's profile: top functions by own time and (leitstand, aiohttp, kopf
    frames) by cumulative time. Time blocked in epoll (the idle event loop) is left out."""
    import pstats

    stats = pstats.Stats(str(path))
    entries = []
    idle = 0.0
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (filename, line, func), (_cc, calls, tottime, cumtime, _callers) in raw.items():
        if "epoll" in func:
            idle += tottime
            continue
        short = re.sub(r"^.*/lib/python3\.\d+/", "", filename)
        for marker in ("/site-packages/", "/operator/", "/scheduler/"):
            if marker in filename:
                short = marker.strip("/") + "/" + filename.split(marker, 1)[1]
                break
        entries.append({"function": f"{short}:{line}({func})", "calls": calls, "tottime": round(tottime, 4),
                        "cumtime": round(cumtime, 4)})
    by_tot = sorted(entries, key=lambda e: -e["tottime"])[:top]
    focus = [e for e in entries if any(k in e["function"] for k in ("operator/", "scheduler/", "aiohttp/", "kopf/"))]
    by_cum = sorted(focus, key=lambda e: -e["cumtime"])[:top]
    busy = sum(e["tottime"] for e in entries)
    return {"file": str(path), "busy_seconds": round(busy, 3), "idle_seconds": round(idle, 3),
            "top_tottime": by_tot, "top_cumtime": by_cum}


# --------------------------------------------------------------------------------------------------
# The API cost probe: what one request of each kind the operator path adds costs kube-apiserver


@dataclass
class ApiCost:
    kind: str
    requests: int
    wall_seconds: float
    cpu_seconds: dict[str, float]

    def ms_per_request(self, process: str) -> float:
        return 1000 * self.cpu_seconds.get(process, 0.0) / self.requests if self.requests else 0.0


async def _timed(ctx: Context, kind: str, items: Sequence[Any], work: Callable[[Any], Awaitable[None]]) -> ApiCost:
    cpu0 = ctx.sampler.sample()
    t0 = time.monotonic()
    await _pool(items, ctx.opts.concurrency, work)
    wall = time.monotonic() - t0
    cpu = CpuSampler.delta(cpu0, ctx.sampler.sample())[0]
    return ApiCost(kind, len(items), round(wall, 3), cpu)


async def api_costs(ctx: Context, n: int) -> list[ApiCost]:
    """With no operator running: n TrainingJob creates (admin, as tenants submit), n status merge-patches
    of the operator's shape (the first, Admitted, and a second, Running) and n Events (as
    leitstand-operator), each timed alone with /proc CPU; then the first status patch again on fresh
    objects with the spec's `self == oldSelf` CEL rule removed from the CRD (restored afterwards)."""
    from leitstand.operator.service.status import event_body, rfc3339

    await clean(ctx.admin)
    names = [f"c-{i:05d}" for i in range(n)]
    base = f"{TJ_API}/namespaces/{NAMESPACE}/trainingjobs"
    uids: dict[str, str] = {}
    errors: Counter[str] = Counter()

    async def create(name: str) -> None:
        status, body = await ctx.admin.request("POST", base, trainingjob(name, 1, 1))
        if status == 201:
            uids[name] = str(body["metadata"]["uid"])
        else:
            errors[f"create {status}"] += 1

    async def patch_status(name: str) -> None:
        now = rfc3339()
        message = "placed 1 replica on b200-0000"
        patch = {"status": {
            "phase": "Pending", "reason": "Admitted", "message": message, "queuedAt": now, "admittedAt": now,
            "restarts": 0, "preemptions": 0, "gpus": "1",
            "placement": {"nodes": ["b200-0000"], "nodeCount": 1, "level": "node", "domain": "b200-0000"},
            "conditions": [{"type": "Admitted", "status": "True", "reason": "Admitted", "message": message,
                            "lastTransitionTime": now}],
        }}
        status, _ = await ctx.op_client.request("PATCH", f"{base}/{name}/status", patch,
                                                content_type="application/merge-patch+json")
        if status != 200:
            errors[f"status {status}"] += 1

    async def event(name: str) -> None:
        involved = {"apiVersion": "leitstand.dev/v1alpha1", "kind": "TrainingJob", "name": name,
                    "namespace": NAMESPACE, "uid": uids.get(name, "")}
        body = event_body(involved, "Admitted", "placed 1 replica on b200-0000")
        status, _ = await ctx.op_client.request("POST", f"/api/v1/namespaces/{NAMESPACE}/events", body)
        if status != 201:
            errors[f"event {status}"] += 1

    async def patch_running(name: str) -> None:
        now = rfc3339()
        message = "1 replicas running"
        patch = {"status": {"phase": "Running", "reason": "Running", "message": message, "startedAt": now,
                            "conditions": [{"type": "Running", "status": "True", "reason": "Running",
                                            "message": message, "lastTransitionTime": now}]}}
        status, _ = await ctx.op_client.request("PATCH", f"{base}/{name}/status", patch,
                                                content_type="application/merge-patch+json")
        if status != 200:
            errors[f"status {status}"] += 1

    costs = [await _timed(ctx, "TrainingJob create (admin)", names, create)]
    costs.append(await _timed(ctx, "TrainingJob status merge-patch", names, patch_status))
    costs.append(await _timed(ctx, "TrainingJob status merge-patch, 2nd (Running)", names, patch_running))
    costs.append(await _timed(ctx, "Event create", names, event))
    await clean(ctx.admin)
    # Does a status write pay for the spec's CEL transition rule (`self == oldSelf` over the embedded pod
    # template)? The same status patches with that one rule removed from the CRD (restored afterwards).
    crd_path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/trainingjobs.leitstand.dev"
    crd = await ctx.admin.get(crd_path)
    original = json.loads(json.dumps(crd))
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = spec_schema.get("x-kubernetes-validations") or []
    spec_schema["x-kubernetes-validations"] = [r for r in rules if "oldSelf" not in r.get("rule", "")]
    if len(spec_schema["x-kubernetes-validations"]) < len(rules):
        status, body = await ctx.admin.request("PUT", crd_path, crd)
        try:
            if status == 200:
                await asyncio.sleep(3.0)  # the API server rebuilds the CRD's handler
                await _pool(names, ctx.opts.concurrency, create)
                costs.append(await _timed(ctx, "TrainingJob status merge-patch, no `self == oldSelf` rule",
                                          names, patch_status))
            else:
                errors[f"crd {status}"] += 1
        finally:
            await clean(ctx.admin)
            current = await ctx.admin.get(crd_path)
            original["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            restored, body = await ctx.admin.request("PUT", crd_path, original)
            if restored != 200:
                raise RuntimeError(f"restoring CRD trainingjobs.leitstand.dev: HTTP {restored} {body}")
            await asyncio.sleep(3.0)
    if errors:
        ctx.progress(f"  API cost probe: errors {dict(errors)}")
    await ctx.admin.request("DELETE", f"/api/v1/namespaces/{NAMESPACE}/events", None)
    return costs


# --------------------------------------------------------------------------------------------------
# One benchmark run


@dataclass
class Context:
    opts: Options
    run: Path
    admin: KubeClient
    op_client: KubeClient
    sampler: CpuSampler
    nodes: list[tuple[str, int]]
    progress: Report
    operator: OperatorProcess | None = None
    operators: list[OperatorProcess] = field(default_factory=list)
    site_dir: Path | None = None
    """The private folder with the profiling `sitecustomize.py` (removed when the operator stops)."""


async def measure(ctx: Context, workload: Workload, path: str,
                  submit: Callable[[Submission], Coroutine[Any, Any, None]]) -> PhaseResult:
    """Clean, watch, submit, wait until the pods that fit are bound; CPU, APF and cycles over the window."""
    progress = ctx.progress
    await clean(ctx.admin)
    result = PhaseResult(workload.name, path, workload.jobs if path == "leitstand" else workload.fit_jobs,
                         workload.fit_pods, cores=os.cpu_count() or 1)
    watch = PodWatch(ctx.admin)
    await watch.start()
    before = await metrics_snapshot(ctx.admin)
    log_offset = len(ctx.operator.log_text()) if ctx.operator is not None else 0
    quiet0 = ctx.sampler.sample()
    await asyncio.sleep(1.0)
    quiet = CpuSampler.delta(quiet0, ctx.sampler.sample())[0]
    background = quiet["other"]
    result.background_cores = round(background / 1.0, 2)
    result.idle_cluster_cores = round(sum(quiet.get(name, 0.0) for name in CLUSTER_PROCESSES), 2)
    progress(f"  {workload.name} / {path}: submitting (background load before: {background:.2f} cores)")
    sub = Submission()
    profiling = ctx.operator is not None and profile_path(ctx.opts.profile, workload.name) is not None
    if profiling and ctx.operator is not None:
        os.kill(ctx.operator.pid, signal.SIGUSR1)  # cProfile on, for exactly the measured window
    cpu0 = ctx.sampler.sample()
    t0 = time.monotonic()
    task = asyncio.create_task(submit(sub))
    done = await watch.wait_bound(workload.fit_pods, workload.replicas, t0 + ctx.opts.timeout, progress)
    cpu1 = ctx.sampler.sample()
    if profiling and ctx.operator is not None:
        os.kill(ctx.operator.pid, signal.SIGUSR2)  # cProfile off, stats written
    end = max(watch.bound.values(), default=time.monotonic())
    if not task.done():
        await asyncio.wait_for(task, timeout=max(5.0, ctx.opts.timeout - (time.monotonic() - t0)))
    await task
    after = await metrics_snapshot(ctx.admin)
    result.complete = done
    result.pods_bound = watch.bound_count(workload.replicas)
    result.pods_created, result.binds_seen, result.bound_pods_deleted = watch.added, watch.binds, watch.unbound
    result.wall_seconds = round(end - t0, 3)
    result.submit_seconds = round(sub.finished - t0, 3)
    made, seen = latencies(sub, watch, (lambda pod: watch.job.get(pod, pod)) if path == "leitstand" else str)
    result.latency_ms = {k: round(v, 1) for k, v in percentiles(made).items()}
    result.pod_created_to_bound_ms = {k: round(v, 1) for k, v in percentiles(seen).items()}
    result.cpu_seconds, result.operator_threads, result.machine_busy_seconds = CpuSampler.delta(cpu0, cpu1)
    if ctx.operator is None:
        result.cpu_seconds.pop("leitstand run", None)
    result.apf = flow_delta(before, after, "global-default/global-default")
    result.requests = request_delta(before, after)
    result.client_errors = dict(sub.errors)
    if ctx.operator is not None:
        result.status_seconds = await wait_statuses(ctx.admin, workload.fit_jobs, t0, t0 + ctx.opts.timeout)
        await asyncio.sleep(3.0)  # a quiet moment: nothing more may be bound
        result.bound_after_settle = watch.bound_count(workload.replicas)
        result.pods_created, result.binds_seen, result.bound_pods_deleted = watch.added, watch.binds, watch.unbound
        result.job_phases = await job_phases(ctx.admin)
        result.cycles = cycle_summary(ctx.operator.log_text()[log_offset:])
        result.operator_rss_mib = round(ctx.operator.rss_mib(), 1)
        result.operator_log = str(ctx.operator.log)
    await watch.stop()
    await clean(ctx.admin)
    rate = result.pods_per_second
    progress(f"  {workload.name} / {path}: {result.pods_bound}/{workload.fit_pods} pods bound in "
             f"{result.wall_seconds:.2f} s = {rate:.1f} pods/s")
    return result


def _process_cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


async def start_leitstand(ctx: Context, workload: Workload) -> OperatorProcess:
    """`leitstand run` as leitstand-operator (launcher), once it leads; under cProfile with --profile."""
    from leitstand.operator.service.launcher import start_operator

    log_dir = ctx.opts.log_dir or Path(tempfile.gettempdir())
    log = log_dir / f"bench-operator-{time.strftime('%Y%m%d-%H%M%S')}-{workload.name}.log"
    env: dict[str, str] = {}
    profile = profile_path(ctx.opts.profile, workload.name)
    if profile is not None:
        ctx.site_dir = Path(tempfile.mkdtemp(prefix="leitstand-bench-site-"))
        env = profile_env(profile, ctx.site_dir)
    ctx.progress(f"  starting leitstand run as leitstand-operator (log {log})")
    operator = start_operator(ctx.run / "leitstand-operator.kubeconfig", log, identity=IDENTITY, extra_env=env)
    ctx.operators.append(operator)
    if not await asyncio.to_thread(operator.wait_for_log, "leading as", 180.0):
        raise RuntimeError(f"leitstand run did not start leading within 180 s (another leader?); log {log}:\n"
                           + "\n".join(operator.log_text().splitlines()[-20:]))
    ctx.operator = operator
    ctx.sampler.operator_pid = operator.pid
    return operator


async def stop_leitstand(ctx: Context, workload: Workload) -> None:
    operator = ctx.operator
    if operator is None:
        return
    await asyncio.to_thread(operator.stop)
    ctx.operator = None
    ctx.sampler.operator_pid = None
    if ctx.site_dir is not None:
        shutil.rmtree(ctx.site_dir, ignore_errors=True)
        ctx.site_dir = None


def profile_path(profile: Path | None, workload: str) -> Path | None:
    """One profile file per operator phase: FILE → FILE's stem-<workload><suffix>."""
    if profile is None:
        return None
    profile = profile.resolve()
    return profile.with_name(f"{profile.stem}-{workload}{profile.suffix or '.prof'}")


async def bench(ctx: Context, workloads: Sequence[Workload]) -> list[PhaseResult]:
    """Per workload: the raw loop, then `leitstand run` (started for the phase and stopped after it), so
    the two rows of a workload run minutes apart at most, under the same background load."""
    results: list[PhaseResult] = []
    for workload in workloads:
        if not ctx.opts.skip_raw:
            pods = raw_pods(workload, ctx.nodes)

            async def raw(sub: Submission, pods: list[tuple[str, str, dict[str, Any]]] = pods) -> None:
                await submit_raw(ctx.op_client, pods, ctx.opts.concurrency, sub)

            results.append(await measure(ctx, workload, "raw", raw))
        if ctx.opts.floor:
            floor_pods = raw_pods(workload, ctx.nodes, FLOOR_PREFIX)

            async def floor(sub: Submission, pods: list[tuple[str, str, dict[str, Any]]] = floor_pods) -> None:
                await submit_floor(ctx.admin, ctx.op_client, pods, ctx.opts.concurrency, sub)

            results.append(await measure(ctx, workload, "floor", floor))

        async def jobs(sub: Submission, workload: Workload = workload) -> None:
            await submit_jobs(ctx.admin, workload, ctx.opts.concurrency, sub)

        await start_leitstand(ctx, workload)
        try:
            results.append(await measure(ctx, workload, "leitstand", jobs))
        finally:
            await stop_leitstand(ctx, workload)
    return results


def _order(results: list[PhaseResult]) -> list[PhaseResult]:
    rank = {"single": 0, "gangs": 1}
    paths = {"raw": 0, "floor": 1}
    return sorted(results, key=lambda r: (rank.get(r.workload, 9), paths.get(r.path, 2)))


def run(opts: Options, progress: Report) -> dict[str, Any]:
    """Start (or reuse) the cluster, run every phase, stop what was started; the report as a dict."""
    check_options(opts)
    from leitstand.operator.cluster import controlplane
    from leitstand.operator.cluster.layout import K8S_VERSION, run_dir
    from leitstand.operator.cluster.nodes import make_spec

    if opts.run is not None:
        os.environ["LEITSTAND_RUN"] = str(opts.run)
    run_folder = run_dir()
    started = False
    if not controlplane.status().get("running"):
        progress(f"starting a cluster with {opts.nodes} nodes in {run_folder}")
        controlplane.up(make_spec(opts.nodes, [], None), report=progress)
        started = True
    else:
        progress(f"using the cluster running from {run_folder} (--nodes ignored)")
    operators: list[OperatorProcess] = []
    try:
        state = controlplane.State.load(run_folder)
        assert state is not None
        pids = {p.name: p.pid for p in state.processes if p.name in CLUSTER_PROCESSES}
        flags = apiserver_flags(_process_cmdline(pids.get("kube-apiserver", -1)))

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
                workloads = plan_workloads([g for _, g in nodes], opts)
                ctx = Context(opts, run_folder, admin, op_client, CpuSampler(pids), nodes, progress,
                              operators=operators)
                for w in workloads:
                    progress(f"workload {w.name}: {w.note}")
                snapshot = await metrics_snapshot(admin)
                results = await bench(ctx, workloads)
                costs: list[ApiCost] = []
                if opts.api_costs:
                    progress(f"API cost probe: {opts.api_costs} requests of each kind, no operator running")
                    costs = await api_costs(ctx, opts.api_costs)
                seats = snapshot["seats"].get("global-default", {})
                return {
                    "workloads": workloads,
                    "results": results,
                    "costs": costs,
                    "nodes": nodes,
                    "apf": {"flow_schema": "global-default", "priority_level": "global-default",
                            "nominal_seats": seats.get("nominal"), "current_seats": seats.get("current"),
                            "flags": flags},
                }
            finally:
                await admin.close()
                await op_client.close()

        outcome = asyncio.run(main())
    finally:
        for operator in operators:  # normally stopped after their phase already
            operator.stop()
        if started and not opts.keep_cluster:
            controlplane.down(report=progress)
    results = _order(outcome["results"])
    nodes = outcome["nodes"]
    report: dict[str, Any] = {
        "cluster": {"nodes": len(nodes), "gpus": sum(g for _, g in nodes), "started_here": started,
                    "run": str(run_folder), "kubernetes": K8S_VERSION, "cores": os.cpu_count() or 1},
        "concurrency": opts.concurrency,
        "workload_notes": [w.note for w in outcome["workloads"]],
        "interpretation": INTERPRETATION,
        "code": code_version(),
        "apf": outcome["apf"],
        **summarize(results),
        "api_costs": cost_rows(outcome["costs"], results),
    }
    profiles = {}
    for workload in outcome["workloads"]:
        path = profile_path(opts.profile, workload.name)
        if path is not None and path.exists():
            profiles[workload.name] = profile_summary(path)
    if profiles:
        report["profile"] = profiles
    return report


def cost_rows(costs: Sequence[ApiCost], results: Sequence[PhaseResult]) -> list[dict[str, Any]]:
    """The probe's rows, plus the raw loop's pod create + bind from the single-GPU phase for reference."""
    rows = []
    raw = next((r for r in results if r.path == "raw" and r.workload == "single"), None)
    if raw is not None and raw.pods_bound:
        rows.append({"kind": "pod create + bind (raw loop, per pod)", "requests": raw.pods_bound,
                     "wall_seconds": raw.wall_seconds,
                     "apiserver_ms": round(1000 * raw.cpu_seconds.get("kube-apiserver", 0.0) / raw.pods_bound, 3),
                     "etcd_ms": round(1000 * raw.cpu_seconds.get("etcd", 0.0) / raw.pods_bound, 3),
                     "kcm_ms": round(1000 * raw.cpu_seconds.get("kube-controller-manager", 0.0) / raw.pods_bound, 3)})
    for cost in costs:
        rows.append({"kind": cost.kind, "requests": cost.requests, "wall_seconds": cost.wall_seconds,
                     "apiserver_ms": round(cost.ms_per_request("kube-apiserver"), 3),
                     "etcd_ms": round(cost.ms_per_request("etcd"), 3),
                     "kcm_ms": round(cost.ms_per_request("kube-controller-manager"), 3)})
    return rows


def code_version() -> dict[str, Any]:
    """The commit measured, and the operator files that differ from it (others edit them concurrently)."""
    import subprocess

    from leitstand.operator.cluster.layout import repo_root

    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=repo_root(), capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return ""
        return out.stdout if out.returncode == 0 else ""

    changed = [line[3:] for line in git("status", "--porcelain", "--", "operator/service").splitlines() if line]
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "operator_service_changed": changed}


INTERPRETATION = (
    "each workload runs on an empty cluster, first as the raw loop, then through leitstand run (started for the "
    "phase); a gang workload larger than the cluster is timed until the gangs that fit at once are bound (all are "
    "submitted, the rest must stay Pending); the raw loop creates and binds the same number of pods of the same "
    "shape with the same client, concurrency and identity; the floor makes, per job, the requests any operator of "
    "TrainingJobs must make (the tenant's TrainingJob, its pods, their binds, one status write) with no scheduling "
    "and no watch, between the two"
)


# --------------------------------------------------------------------------------------------------
# The command


def operator_bench(
    nodes: Annotated[int, typer.Option(help="Simulated 8-GPU nodes, if a cluster must be started.")] = 256,
    single: Annotated[int, typer.Option(help="One-GPU TrainingJobs (phase 1; 0 skips it).")] = 1000,
    gangs: Annotated[int, typer.Option(help="Gang TrainingJobs (phase 2; 0 skips it).")] = 100,
    gang_replicas: Annotated[int, typer.Option(help="Replicas per gang.")] = 8,
    gang_gpus: Annotated[int, typer.Option(help="GPUs per gang replica (1-8).")] = 8,
    concurrency: Annotated[int, typer.Option(help="Requests in flight of both clients (the binder's default).")] = 64,
    timeout: Annotated[float, typer.Option(help="Give up on a phase after this many seconds.")] = 600.0,
    run_folder: Annotated[
        Path | None,
        typer.Option("--run", help="Run folder of a running cluster to use (default $LEITSTAND_RUN); "
                     "if none runs there, one is started there and stopped at the end."),
    ] = None,
    keep_cluster: Annotated[bool, typer.Option(help="Leave a cluster this command started running.")] = False,
    skip_raw: Annotated[bool, typer.Option(help="Only the operator's phases (e.g. with --profile).")] = False,
    floor: Annotated[bool, typer.Option(help="Also time the TrainingJob floor (the requests any TrainingJob "
                                              "operator must make, no scheduling).")] = True,
    profile: Annotated[
        Path | None, typer.Option(help="cProfile the operator's main thread during its phases into this file.")
    ] = None,
    log_dir: Annotated[Path | None, typer.Option(help="Where the operator's log goes [default: the temp dir].")] = None,
    api_costs: Annotated[
        int, typer.Option(help="Requests per kind in the API cost probe after the phases (0 skips it).")
    ] = 1000,
    json_output: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Pods bound per second by `leitstand run` next to a raw create+bind loop, on the local cluster."""
    opts = Options(nodes=nodes, single=single, gangs=gangs, gang_replicas=gang_replicas, gang_gpus=gang_gpus,
                   concurrency=concurrency, timeout=timeout, run=run_folder, keep_cluster=keep_cluster,
                   skip_raw=skip_raw, floor=floor, profile=profile, log_dir=log_dir, api_costs=api_costs)
    try:
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

    render(report, Console())
