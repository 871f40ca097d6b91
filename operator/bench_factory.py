"""`leitstand bench factory`: an AI factory's shape on the local cluster, an hour of jobs run to the end.

The shape (docs/factory.md): ~1,250 DGX-like 8-GPU nodes in racks, 130 of them a node pool reserved
for a research consortium; tenants as Queues — the consortium (`research-pool` on its reserved pool,
`research` with a small quota on the shared nodes), an SME department (`sme`, ~20 % of the shared
GPUs, split into two projects) and a dozen industry tenants (`industry-01..12`), each leaf with its own
namespace. The workload, synthesised and seeded at ~100 % offered load:

* research: the LLM-cluster mix of Shanghai AI Lab's Kalos cluster (the Acme tables in
  `<traces>/acme`): job sizes from `gpu_num_histogram.csv` (pretraining gangs of 96-1,024 GPUs beside
  many 1-GPU evaluation jobs), durations from the per-type CDFs of `job_type_duration_queue_cdf.csv`;
  gangs of >= 96 GPUs go to the reserved pool, smaller jobs to the shared quota;
* industry and SME: the tasks of openb (`alibaba-gpu-2023/openb_pod_list_default.csv`: GPUs or a GPU
  fraction per task, duration = deletion - creation time).

Arrivals are Poisson per tenant over `minutes` of trace time; durations are capped at that hour so it
runs to its end. Time is compressed by `speed` (durations and inter-arrival times divided by it) and
jobs end through KWOK's `leitstand.dev/sim-duration` annotation. The TrainingJobs are created by the
cluster admin into the tenants' namespaces (the queues admit only those namespaces). `leitstand run`
runs as `leitstand-operator`; every `interval` seconds the bench reads the Queues' status (allocated,
fairShare) and the processes' CPU and memory from /proc, until every job has ended; then it reads every
TrainingJob's status once for the waits.

Pure parts (workload synthesis, summaries) are unit-tested in tests/unit/test_bench_factory.py.
"""

from __future__ import annotations

import bisect
import csv
import json
import math
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from leitstand.operator.service.launcher import OperatorProcess

Report = Callable[[str], None]
GROUP_PATH = "/apis/leitstand.dev/v1alpha1"
LABEL = "leitstand.dev/campaign"
CAMPAIGN = "factory"
NODE_GPUS = 8
POOL = "research"
SHARED_POOL = "dgx"
TERMINAL = ("Succeeded", "Failed")
PRETRAIN_MIN_GPUS = 96
CREATE_THREADS = 32
# The service's default Lease (15 s, renew deadline 10 s): renewals run on a thread of their own since
# a run here lost a 45 s deadline behind long cycles (docs/factory.md).
CONFIG = """\
scheduler: {min_runtime_seconds: 3}
cycle_min_interval_seconds: 0.1
"""
EXITING = "exiting so a fresh start"
HANG_SECONDS = 20.0


class FactoryError(ValueError):
    """A bad option or input file; the message names it and the fix."""


# --------------------------------------------------------------------------------------------------
# The shape: nodes and queues


@dataclass(frozen=True)
class Tenant:
    queue: str
    namespace: str
    quota: int
    """Deserved GPUs (on the reserved pool for research-pool, else on the shared nodes)."""
    group: str
    """research, sme or industry."""
    parent: str | None = None
    node_pool: str | None = None
    load: float = 0.0
    """Offered GPU-seconds per second of trace time (filled by `plan_tenants`)."""


@dataclass(frozen=True)
class Shape:
    nodes: int = 1250
    research_nodes: int = 130
    industry: int = 12
    sme_fraction: float = 0.20
    research_shared_fraction: float = 0.05
    nodes_per_rack: int = 8
    racks_per_spine: int = 16

    @property
    def shared_gpus(self) -> int:
        return (self.nodes - self.research_nodes) * NODE_GPUS

    @property
    def pool_gpus(self) -> int:
        return self.research_nodes * NODE_GPUS

    @property
    def total_gpus(self) -> int:
        return self.nodes * NODE_GPUS


def check_shape(shape: Shape) -> None:
    if shape.research_nodes < 1 or shape.research_nodes >= shape.nodes:
        raise FactoryError(f"--research-nodes must be between 1 and --nodes - 1 (got {shape.research_nodes} of "
                           f"{shape.nodes})")
    if shape.industry < 1:
        raise FactoryError("--industry must be >= 1")
    if not 0 < shape.sme_fraction + shape.research_shared_fraction < 1:
        raise FactoryError("the SME and research shares of the shared GPUs must add up to less than 1")


def plan_tenants(shape: Shape, seed: int) -> list[Tenant]:
    """The queues and their offered loads. Quotas: research-pool = its pool; research a small share of
    the shared GPUs; sme ~20 % (60/40 between two projects); the rest evenly over the industry tenants.
    Offered loads add up to every GPU of the cluster: research-pool its pool, SME 1.2 x its quota (so the
    department contends), industry tenants a seeded 0.5-1.5 x their quota, scaled to fill the rest."""
    check_shape(shape)
    rng = random.Random(seed)
    shared = shape.shared_gpus
    research_q = int(shared * shape.research_shared_fraction)
    sme_q = int(shared * shape.sme_fraction)
    sme_a = round(sme_q * 0.6)
    industry_q = (shared - research_q - sme_q) // shape.industry
    tenants = [
        Tenant("research-pool", "research", shape.pool_gpus, "research", node_pool=POOL, load=float(shape.pool_gpus)),
        Tenant("research", "research", research_q, "research"),
        Tenant("sme", "", sme_q, "sme"),
        Tenant("sme-vision", "sme-vision", sme_a, "sme", parent="sme", load=1.2 * sme_a),
        Tenant("sme-robotics", "sme-robotics", sme_q - sme_a, "sme", parent="sme", load=1.2 * (sme_q - sme_a)),
    ]
    factors = [rng.uniform(0.5, 1.5) for _ in range(shape.industry)]
    # research's small jobs are part of the Kalos mix (~5 % of its GPU time); their load is set there.
    rest = shared - shape.pool_gpus * 0.05 - 1.2 * sme_q
    scale = rest / (industry_q * sum(factors))
    for i, factor in enumerate(factors, 1):
        name = f"industry-{i:02d}"
        tenants.append(Tenant(name, name, industry_q, "industry", load=industry_q * factor * scale))
    return tenants


def queue_manifests(tenants: Sequence[Tenant]) -> list[dict[str, Any]]:
    out = []
    for t in tenants:
        spec: dict[str, Any] = {"gpu": {"quota": t.quota}}
        if t.parent:
            spec["parent"] = t.parent
        if t.node_pool:
            spec["nodePool"] = t.node_pool
        if t.namespace:
            spec["namespaces"] = [t.namespace]
        out.append({"apiVersion": "leitstand.dev/v1alpha1", "kind": "Queue",
                    "metadata": {"name": t.queue, "labels": {LABEL: CAMPAIGN}}, "spec": spec})
    return out


def leaves(tenants: Sequence[Tenant]) -> list[Tenant]:
    return [t for t in tenants if t.namespace]


# --------------------------------------------------------------------------------------------------
# The traces


@dataclass(frozen=True)
class Cdf:
    """A piecewise CDF over log2 buckets: `points` are (seconds, fraction <= seconds), increasing."""

    points: tuple[tuple[float, float], ...]

    def sample(self, rng: random.Random) -> float:
        u = rng.random()
        fracs = [p[1] for p in self.points]
        i = bisect.bisect_left(fracs, u)
        if i == 0:
            return self.points[0][0]
        if i >= len(self.points):
            return self.points[-1][0]
        (x0, f0), (x1, f1) = self.points[i - 1], self.points[i]
        w = (u - f0) / (f1 - f0) if f1 > f0 else 1.0
        return float(2 ** (math.log2(x0) + w * (math.log2(x1) - math.log2(x0))))


@dataclass(frozen=True)
class KalosMix:
    sizes: tuple[tuple[int, int, float], ...]
    """(gpu_num_min, gpu_num_max, jobs) per histogram row."""
    durations: Mapping[str, Cdf]
    """Per job type (Eval, Pretrain, Debug, Other)."""


def load_kalos(acme: Path) -> KalosMix:
    hist, cdfs = acme / "gpu_num_histogram.csv", acme / "job_type_duration_queue_cdf.csv"
    for path in (hist, cdfs):
        if not path.is_file():
            raise FactoryError(f"{path} is missing: the Acme tables (Kalos) must be in <traces>/acme "
                               "(set --traces or $LEITSTAND_TRACES)")
    sizes = []
    with hist.open() as f:
        for row in csv.DictReader(f):
            if row["cluster"] == "Kalos":
                sizes.append((int(row["gpu_num_min"]), int(row["gpu_num_max"]), float(row["jobs"])))
    points: dict[str, list[tuple[float, float]]] = {}
    with cdfs.open() as f:
        for row in csv.DictReader(f):
            if row["cluster"] == "Kalos" and row["metric"] == "duration":
                points.setdefault(row["type"], []).append((float(row["le_seconds"]), float(row["cdf_percent"]) / 100))
    if not sizes or not {"Eval", "Pretrain", "Debug"} <= set(points):
        raise FactoryError(f"{acme}: no Kalos rows (sizes or Eval/Pretrain/Debug durations) in the Acme tables")
    return KalosMix(tuple(sizes), {k: Cdf(tuple(sorted(v))) for k, v in points.items()})


@dataclass(frozen=True)
class OpenbTask:
    gpus: float
    """Whole GPUs (1, 2, 4, 8) or a fraction of one (gpu_milli / 1000)."""
    seconds: float


def load_openb(path: Path) -> list[OpenbTask]:
    from leitstand.scheduler.sim.openb import POD_COLUMNS, read_rows

    if not path.is_file():
        raise FactoryError(f"{path} is missing: openb's pod list must be in <traces>/alibaba-gpu-2023 "
                           "(run `leitstand traces fetch`, or set --traces)")
    tasks = []
    for row in read_rows(path, (*POD_COLUMNS, "creation_time", "deletion_time"), what="an openb pod list"):
        num = row.integer("num_gpu", default=0)
        if num <= 0:
            continue
        milli = min(max(row.integer("gpu_milli", default=1000, minimum=None), 1), 1000)
        seconds = row.integer("deletion_time") - row.integer("creation_time")
        if seconds <= 0:
            continue
        tasks.append(OpenbTask(float(num) if num > 1 or milli >= 1000 else milli / 1000, float(seconds)))
    if not tasks:
        raise FactoryError(f"{path}: no GPU task with a positive duration")
    return tasks


# --------------------------------------------------------------------------------------------------
# The workload


@dataclass(frozen=True)
class Job:
    name: str
    queue: str
    namespace: str
    kind: str
    """Eval, Pretrain, Debug (research) or openb."""
    replicas: int
    gpus: float
    """GPUs per replica (a fraction below 1 for shared-GPU tasks)."""
    arrival: float
    """Trace seconds from the start of the hour."""
    seconds: float
    """Trace seconds of running."""

    @property
    def total_gpus(self) -> float:
        return self.replicas * self.gpus


def kalos_job(mix: KalosMix, rng: random.Random, cap: float) -> tuple[str, int, float, float]:
    """(kind, replicas, GPUs per replica, seconds) of one Kalos job."""
    row = rng.choices(mix.sizes, weights=[s[2] for s in mix.sizes])[0]
    size = rng.randint(row[0], row[1])
    if size >= PRETRAIN_MIN_GPUS:
        kind = "Pretrain"
    elif size <= 2:
        kind = "Eval"
    else:
        kind = "Debug"
    seconds = min(mix.durations[kind].sample(rng), cap)
    if size >= NODE_GPUS:
        return kind, math.ceil(size / NODE_GPUS), float(NODE_GPUS), seconds
    return kind, 1, float(size), seconds


def arrivals(rng: random.Random, draw: Callable[[], tuple[Any, float]], load: float, hour: float
             ) -> list[tuple[Any, float]]:
    """Draw jobs (item, GPU-seconds) until they offer `load` x `hour` GPU-seconds (the last one is kept
    when that brings the total closer), then give each a uniform random arrival in the hour: a Poisson
    stream conditioned on its count, whose offered load does not hang on a few big jobs' luck."""
    target = load * hour
    out: list[Any] = []
    total = 0.0
    while total < target:
        item, gpu_seconds = draw()
        if out and total + gpu_seconds - target > target - total:
            break
        out.append(item)
        total += gpu_seconds
    return sorted(((item, rng.uniform(0, hour)) for item in out), key=lambda x: x[1])


def synthesize(tenants: Sequence[Tenant], mix: KalosMix, tasks: Sequence[OpenbTask], hour: float,
               seed: int) -> list[Job]:
    """Every tenant's jobs over `hour` trace seconds, seeded; sorted by arrival. The research stream is
    the Kalos mix: gangs of >= 96 GPUs fill the reserved pool's load, the smaller kinds go to the shared
    quota in the proportion of GPU time the mix gives them."""
    rng = random.Random(seed)
    out: list[Job] = []
    pool = next(t for t in tenants if t.node_pool)
    small = next(t for t in tenants if t.group == "research" and not t.node_pool)
    draws = [kalos_job(mix, rng, hour) for _ in range(20000)]
    big = [d for d in draws if d[0] == "Pretrain"]
    rest = [d for d in draws if d[0] != "Pretrain"]
    big_time = sum(r * g * s for _, r, g, s in big)
    small_time = sum(r * g * s for _, r, g, s in rest)
    small_load = pool.load * small_time / big_time

    def pick(choices: Sequence[tuple[str, int, float, float]]) -> Callable[[], tuple[Any, float]]:
        def one() -> tuple[Any, float]:
            d = choices[rng.randrange(len(choices))]
            return d, d[1] * d[2] * d[3]
        return one

    for target, load, choices in ((pool, pool.load, big), (small, small_load, rest)):
        for i, (draw, t) in enumerate(arrivals(rng, pick(choices), load, hour)):
            kind, replicas, gpus, seconds = draw
            # A gang larger than the reserved pool (a small test cluster) is cut to the pool's size.
            replicas = min(replicas, max(1, pool.quota // NODE_GPUS)) if target is pool else replicas
            out.append(Job(f"{target.queue}-{i:05d}-{kind.lower()}", target.queue, target.namespace, kind,
                           replicas, gpus, t, seconds))
    for tenant in tenants:
        if tenant.group == "research" or not tenant.namespace:
            continue

        def task() -> tuple[Any, float]:
            one = tasks[rng.randrange(len(tasks))]
            return one, one.gpus * min(one.seconds, hour)

        for i, (item, t) in enumerate(arrivals(rng, task, tenant.load, hour)):
            out.append(Job(f"{tenant.queue}-{i:05d}", tenant.queue, tenant.namespace, "openb", 1, item.gpus, t,
                           min(item.seconds, hour)))
    out.sort(key=lambda j: j.arrival)
    return out


def offered(jobs: Sequence[Job], hour: float) -> dict[str, dict[str, float]]:
    """Per queue: jobs and the offered load as GPUs (GPU-seconds / hour)."""
    out: dict[str, dict[str, float]] = {}
    for job in jobs:
        row = out.setdefault(job.queue, {"jobs": 0, "gpus": 0.0})
        row["jobs"] += 1
        row["gpus"] += job.total_gpus * job.seconds / hour
    return {k: {"jobs": v["jobs"], "gpus": round(v["gpus"], 1)} for k, v in sorted(out.items())}


def mix_summary(jobs: Sequence[Job]) -> dict[str, dict[str, float]]:
    """The research jobs per kind: count, share of jobs, share of GPU time, GPUs min-max."""
    research = [j for j in jobs if j.kind != "openb"]
    total_gt = sum(j.total_gpus * j.seconds for j in research) or 1.0
    out: dict[str, dict[str, float]] = {}
    for kind in ("Pretrain", "Debug", "Eval"):
        sel = [j for j in research if j.kind == kind]
        if sel:
            out[kind] = {"jobs": len(sel), "jobs_pct": round(100 * len(sel) / len(research), 1),
                         "gpu_time_pct": round(100 * sum(j.total_gpus * j.seconds for j in sel) / total_gt, 1),
                         "gpus_min": min(j.total_gpus for j in sel), "gpus_max": max(j.total_gpus for j in sel)}
    return out


def compressed_seconds(seconds: float, speed: float) -> int:
    return max(1, round(seconds / speed))


def manifest(job: Job, speed: float) -> dict[str, Any]:
    gpu: dict[str, Any] = {"gpus": int(job.gpus)} if job.gpus >= 1 else {"gpuFraction": round(job.gpus, 3)}
    return {
        "apiVersion": "leitstand.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": job.name, "namespace": job.namespace, "labels": {LABEL: CAMPAIGN}},
        "spec": {"queue": job.queue, "replicas": job.replicas, **gpu,
                 "template": {"metadata": {"annotations": {
                     "leitstand.dev/sim-duration": f"{compressed_seconds(job.seconds, speed)}s"}},
                     "spec": {"containers": [{"name": "main", "image": "registry.example/train:1"}]}}},
    }


# --------------------------------------------------------------------------------------------------
# Summaries (pure)


@dataclass
class QueueSample:
    t: float
    allocated: dict[str, float]
    fair: dict[str, float]
    pending: dict[str, int]


def queue_sample(t: float, by_name: Mapping[str, Mapping[str, Any]], queues: Sequence[str]) -> QueueSample:
    """One sample from Queue statuses or the operator's /v1/queues items (the same field names)."""
    return QueueSample(t, {q: gpu(by_name.get(q, {}).get("allocated")) for q in queues},
                       {q: gpu(by_name.get(q, {}).get("fairShare")) for q in queues},
                       {q: int(by_name.get(q, {}).get("pendingJobs") or 0) for q in queues})


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _ts(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def waits(items: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Per queue: seconds from creation to (last) admission of every admitted TrainingJob."""
    out: dict[str, list[float]] = {}
    for item in items:
        created = _ts(item["metadata"].get("creationTimestamp"))
        admitted = _ts((item.get("status") or {}).get("admittedAt"))
        if created is not None and admitted is not None:
            out.setdefault(item["spec"]["queue"], []).append(max(0.0, admitted - created))
    return out


def job_intervals(items: Sequence[Mapping[str, Any]]) -> list[tuple[str, float, float, float]]:
    """(queue, GPUs, admitted, finished) in epoch seconds of every admitted TrainingJob, from its status
    on the API server (finished = +inf while it runs). A job preempted and admitted again counts from its
    last admission (status.admittedAt is the latest), so such a job's earlier run is missed."""
    out = []
    for item in items:
        spec, status = item["spec"], item.get("status") or {}
        start = _ts(status.get("admittedAt"))
        if start is None:
            continue
        end = _ts(status.get("finishedAt"))
        gpus = float(spec.get("replicas", 1)) * float(spec.get("gpus") or spec.get("gpuFraction") or 0)
        out.append((spec["queue"], gpus, start, math.inf if end is None else end))
    return out


def allocation_from_jobs(intervals: Sequence[tuple[str, float, float, float]], times: Sequence[float],
                         parents: Mapping[str, str]) -> list[dict[str, float]]:
    """GPUs held per queue at each epoch time (a job holds from admission to its end); an inner queue
    holds its children's GPUs. The API server's record, independent of the Queues' status."""
    out = []
    for t in times:
        held: dict[str, float] = {}
        for queue, gpus, start, end in intervals:
            if start <= t < end:
                held[queue] = held.get(queue, 0.0) + gpus
                if queue in parents:
                    held[parents[queue]] = held.get(parents[queue], 0.0) + gpus
        out.append({q: round(v, 3) for q, v in held.items()})
    return out


def share_summary(samples: Sequence[QueueSample], queues: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """Per queue over the samples: mean allocated, mean fair share, mean |allocated - fairShare| (GPUs)."""
    out: dict[str, dict[str, float | None]] = {}
    for q in queues:
        rows = [(s.allocated.get(q, 0.0), s.fair.get(q, 0.0)) for s in samples if q in s.allocated]
        if not rows:
            continue
        # While jobs wait somewhere the fair share is what the queue is owed; once nothing waits the
        # operator leaves status.fairShare at its last value (docs/factory.md), so both gaps are given.
        waiting = [(s.allocated.get(q, 0.0), s.fair.get(q, 0.0)) for s in samples
                   if q in s.allocated and any(s.pending.values())]
        out[q] = {"allocated_mean": round(sum(a for a, _ in rows) / len(rows), 1),
                  "fair_mean": round(sum(f for _, f in rows) / len(rows), 1),
                  "gap_mean": round(sum(abs(a - f) for a, f in rows) / len(rows), 1),
                  "gap_waiting_mean": round(sum(abs(a - f) for a, f in waiting) / len(waiting), 1) if waiting else None,
                  "waiting_samples": len(waiting)}
    return out


def contention(samples: Sequence[QueueSample], top: Sequence[str], shared: Sequence[str], shared_gpus: float,
               sme: str = "sme", threshold: float = 0.9) -> dict[str, Any]:
    """The SME department while the shared nodes are contended: samples with >= `threshold` of the shared
    GPUs allocated and jobs pending there; SME's mean allocated, fair share and share of shared GPUs."""
    rows = []
    for s in samples:
        used = sum(s.allocated.get(q, 0.0) for q in shared)
        if used >= threshold * shared_gpus and sum(s.pending.get(q, 0) for q in shared) > 0:
            rows.append((s.allocated.get(sme, 0.0), s.fair.get(sme, 0.0), s.pending.get(sme, 0)))
    if not rows:
        return {"samples": 0}
    return {"samples": len(rows),
            "allocated_mean": round(sum(r[0] for r in rows) / len(rows), 1),
            "fair_mean": round(sum(r[1] for r in rows) / len(rows), 1),
            "share_of_shared_pct": round(100 * sum(r[0] for r in rows) / len(rows) / shared_gpus, 1),
            "samples_sme_pending": sum(1 for r in rows if r[2] > 0)}


def gpu(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return 0.0


# --------------------------------------------------------------------------------------------------
# The run


@dataclass
class Options:
    nodes: int = 1250
    research_nodes: int = 130
    industry: int = 12
    minutes: float = 60.0
    speed: float = 20.0
    seed: int = 1
    interval: float = 5.0
    timeout: float = 1800.0
    traces: Path | None = None
    plot: Path | None = None
    nodes_per_rack: int = 8
    racks_per_spine: int = 16


@dataclass
class Sampled:
    queues: list[QueueSample] = field(default_factory=list)
    """What the operator holds, from its read API (/v1/queues), sample by sample."""
    status: list[QueueSample] = field(default_factory=list)
    """What the Queue objects' status on the API server says at the same moments."""
    status_age: list[float] = field(default_factory=list)
    """Seconds since the oldest leaf Queue's status.lastUpdated, per sample."""
    cpu: list[tuple[float, float, float, dict[str, float]]] = field(default_factory=list)
    """(t, operator CPU s, operator RSS MiB, control-plane CPU s per process)."""
    writes: list[tuple[float, float, float]] = field(default_factory=list)
    """(t, statuses waiting to be written, seconds the oldest has waited) from the operator's /metrics."""
    errors: int = 0


def _install(run: Path, tenants: Sequence[Tenant]) -> None:
    import subprocess

    from leitstand.operator.cluster.layout import cache_paths, repo_root

    deploy = repo_root() / "deploy"
    kubectl = [str(cache_paths().binary("kubectl")), f"--kubeconfig={run / 'admin.kubeconfig'}"]
    namespaces = sorted({t.namespace for t in tenants if t.namespace})
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in namespaces]
    extra = run / "factory-queues.yaml"
    extra.write_text(yaml_dump([*docs, *queue_manifests(tenants)]))
    for args in (
        ["apply", "-f", str(deploy / "namespace.yaml"), "-f", str(deploy / "crds"),
         "-f", str(deploy / "priorityclasses.yaml")],
        ["wait", "--for=condition=Established", "--timeout=60s", "crd/trainingjobs.leitstand.dev",
         "crd/queues.leitstand.dev"],
        ["apply", "-f", str(extra)],
    ):
        proc = subprocess.run([*kubectl, *args], capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr}")


def yaml_dump(docs: Sequence[Mapping[str, Any]]) -> str:
    import yaml

    return yaml.safe_dump_all(list(docs), sort_keys=False)


def run(opts: Options, progress: Report) -> dict[str, Any]:
    from leitstand.operator.cluster import controlplane
    from leitstand.operator.cluster.layout import run_dir
    from leitstand.operator.cluster.nodes import ClusterSpec, NodePool, Topology
    from leitstand.operator.faults import _token, api_as, read_api
    from leitstand.operator.service.launcher import process_cpu_seconds, start_operator
    from leitstand.operator.traces import OPENB_DIR, resolve_root

    if opts.speed <= 0 or opts.minutes <= 0 or opts.interval <= 0:
        raise FactoryError("--speed, --minutes and --interval must be > 0")
    shape = Shape(opts.nodes, opts.research_nodes, opts.industry, nodes_per_rack=opts.nodes_per_rack,
                  racks_per_spine=opts.racks_per_spine)
    tenants = plan_tenants(shape, opts.seed)
    root = resolve_root(opts.traces)
    mix = load_kalos(root / "acme")
    tasks = load_openb(root / OPENB_DIR / "openb_pod_list_default.csv")
    hour = opts.minutes * 60
    jobs = synthesize(tenants, mix, tasks, hour, opts.seed)
    progress(f"{len(jobs)} TrainingJobs over {opts.minutes:g} trace minutes, compressed {opts.speed:g}x "
             f"into {hour / opts.speed:.0f} s of arrivals")
    run_folder = run_dir()
    started = False
    if not controlplane.status().get("running"):
        spec = ClusterSpec(pools=(NodePool(name=SHARED_POOL, count=shape.nodes - shape.research_nodes),
                                  NodePool(name=POOL, count=shape.research_nodes)),
                           topology=Topology(nodes_per_rack=opts.nodes_per_rack, racks_per_spine=opts.racks_per_spine))
        progress(f"starting a cluster of {shape.nodes} nodes in {run_folder}")
        t_up = time.monotonic()
        controlplane.up(spec, report=progress)
        progress(f"cluster up in {time.monotonic() - t_up:.1f} s")
        started = True
    else:
        progress(f"using the cluster running from {run_folder} (it must have the pools {SHARED_POOL} and {POOL})")
    operator = None
    sampled = Sampled()
    stop = threading.Event()
    try:
        admin = api_as(run_folder, "admin")
        _install(run_folder, tenants)
        state = controlplane.State.load(run_folder)
        assert state is not None
        pids = {p.name: p.pid for p in state.processes}
        port = controlplane.free_ports(["api"])["api"]
        config = run_folder / "factory-operator.yaml"
        config.write_text(CONFIG + f"api: {{port: {port}}}\n")
        log = run_folder / "logs" / "leitstand-run-factory.log"
        cp0 = {n: process_cpu_seconds(p) for n, p in pids.items()}
        t0 = time.monotonic()
        operator = Supervisor(lambda: start_operator(run_folder / "leitstand-operator.kubeconfig", log,
                                                     identity="factory", config=config),
                              progress, lambda: time.monotonic() - t0)
        if not operator.process.wait_for_log("leading as", timeout_seconds=120):
            raise RuntimeError("leitstand run did not start leading in 120 s; log tail:\n"
                               + operator.process.log_text()[-2000:])
        t0, t0_epoch = time.monotonic(), time.time()
        queue_names = [t.queue for t in tenants]

        viewer = _token(run_folder, "tenant-a")
        admin_token = _token(run_folder, "admin")  # /metrics: a tenant may not read it

        def sample() -> None:
            api = api_as(run_folder, "admin")
            api.timeout_seconds = 20.0
            while not stop.is_set():
                now = time.monotonic() - t0
                try:
                    items = api.get(f"{GROUP_PATH}/queues")["items"]
                except Exception:  # a failed sample is counted, the run goes on
                    sampled.errors += 1
                    api.close()
                else:
                    st = {i["metadata"]["name"]: (i.get("status") or {}) for i in items}
                    sampled.status.append(queue_sample(now, st, queue_names))
                    updated = [_ts(st.get(t.queue, {}).get("lastUpdated")) for t in leaves(tenants)]
                    if all(u is not None for u in updated):
                        sampled.status_age.append(time.time() - min(u for u in updated if u is not None))
                # The operator's own view (a tenant's token: every queue's numbers, no job lists).
                code, _, body = read_api(port, "/v1/queues", viewer)
                if code == 200 and body:
                    sampled.queues.append(queue_sample(now, {i["name"]: i for i in body["items"]}, queue_names))
                else:
                    sampled.errors += 1
                waiting = metric_values(port, admin_token, ("leitstand_status_writes_due",
                                                            "leitstand_status_write_lag_seconds"))
                if len(waiting) == 2:
                    sampled.writes.append((now, waiting["leitstand_status_writes_due"],
                                           waiting["leitstand_status_write_lag_seconds"]))
                assert operator is not None
                operator.check()
                sampled.cpu.append((now, operator.cpu_seconds(), operator.process.rss_mib(),
                                    {n: process_cpu_seconds(p) - cp0[n] for n, p in pids.items()}))
                stop.wait(opts.interval)
            api.close_all()

        sampler = threading.Thread(target=sample, daemon=True, name="factory-sampler")
        sampler.start()
        submit_errors: list[str] = []
        late = 0.0
        creator = api_as(run_folder, "admin")

        def create(job: Job) -> None:
            nonlocal late
            late = max(late, time.monotonic() - (t0 + job.arrival / opts.speed))
            try:
                creator.create(f"{GROUP_PATH}/namespaces/{job.namespace}/trainingjobs", manifest(job, opts.speed),
                               exist_ok=False)
            except Exception as exc:  # reported at the end
                submit_errors.append(f"{job.name}: {exc}"[:300])

        # Creates are bound by the API server's latency, not this client's CPU: many in flight.
        pool = ThreadPoolExecutor(CREATE_THREADS)
        try:
            for job in jobs:
                due = t0 + job.arrival / opts.speed
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(create, job)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        creator.close_all()
        submitted_at = time.monotonic() - t0
        progress(f"submitted {len(jobs)} jobs by {submitted_at:.0f} s (latest {late:.1f} s behind its arrival); "
                 f"{len(submit_errors)} refused")
        # Until every job has ended: the queues show nothing allocated and nothing pending, twice running
        # (they are written every few cycles), then one list of every job confirms it.
        deadline = t0 + opts.timeout
        items: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            time.sleep(opts.interval)
            recent = sampled.queues[-2:]
            if len(recent) == 2 and all(not any(s.allocated.values()) and not any(s.pending.values()) for s in recent):
                items = list_jobs(admin)
                if all((i.get("status") or {}).get("phase") in TERMINAL for i in items):
                    break
            elif sampled.queues:
                last = sampled.queues[-1]
                top = [t.queue for t in tenants if not t.parent]
                progress(f"{time.monotonic() - t0:.0f} s: allocated {sum(last.allocated[q] for q in top):.0f} GPUs, "
                         f"pending {sum(last.pending[q] for q in top)} jobs")
        else:
            items = list_jobs(admin)
        wall = time.monotonic() - t0
        stop.set()
        sampler.join(30)
        cpu_op = operator.cpu_seconds()
        log_text = operator.process.log_text()
        admin.close_all()
        report = summarize(opts, shape, tenants, jobs, items, sampled, wall, submitted_at, late, submit_errors,
                           cpu_op, log_text, t0_epoch)
        report["processes"]["operator_restarts"] = operator.events
        if opts.plot is not None:
            report["plot"] = str(plot(opts.plot, sampled, tenants, shape))
        return report
    finally:
        stop.set()
        if operator is not None:
            operator.process.stop()
            if operator.process.alive():
                operator.process.kill()
            kept = run_folder.parent / f"{run_folder.name}-factory-operator.log"
            kept.write_text(operator.process.log_text())
            progress(f"operator log kept in {kept}")
        if started:
            controlplane.down(report=progress)


class Supervisor:
    """One `leitstand run`, kept going as its Deployment with a liveness probe would: started again when
    it exits, and killed and started again when it logged that it is exiting but still runs
    `HANG_SECONDS` later. Every such event is kept (time, what, the log line) for the report."""

    def __init__(self, start: Callable[[], OperatorProcess], report: Report, now: Callable[[], float]) -> None:
        self._start, self._report, self._now = start, report, now
        self.process = start()
        self.events: list[dict[str, Any]] = []
        self._cpu_before = 0.0
        self._cpu_last = 0.0
        self._offset = 0
        self._exiting: tuple[float, str] | None = None

    def cpu_seconds(self) -> float:
        return self._cpu_before + self._cpu_last

    def _new_log(self) -> str:
        try:
            with self.process.log.open("rb") as f:
                f.seek(self._offset)
                chunk: bytes = f.read()
        except OSError:
            return ""
        self._offset += len(chunk)
        return chunk.decode(errors="replace")

    def check(self) -> None:
        cpu = self.process.cpu_seconds()
        if cpu:
            self._cpu_last = cpu
        for line in self._new_log().splitlines():
            if EXITING in line and self._exiting is None:
                self._exiting = (self._now(), line.strip()[:300])
        if not self.process.alive():
            self._restart(f"exited with code {self.process.proc.returncode}")
        elif self._exiting is not None and self._now() - self._exiting[0] > HANG_SECONDS:
            self.process.kill()
            self._restart(f"still running {HANG_SECONDS:g} s after it logged that it exits: killed")

    def _restart(self, what: str) -> None:
        line = self._exiting[1] if self._exiting else ""
        self.events.append({"t": round(self._now(), 1), "what": what, "log": line})
        self._report(f"{self._now():.0f} s: leitstand run {what}; starting it again ({line})")
        self._cpu_before += self._cpu_last
        self._cpu_last = 0.0
        self._exiting = None
        self.process = self._start()


def list_jobs(api: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cont = ""
    while True:
        page = api.get(f"{GROUP_PATH}/trainingjobs?labelSelector={LABEL.replace('/', '%2F')}%3D{CAMPAIGN}&limit=2000"
                       + (f"&continue={cont}" if cont else ""))
        items.extend(page["items"])
        cont = (page.get("metadata") or {}).get("continue") or ""
        if not cont:
            return items


def summarize(opts: Options, shape: Shape, tenants: Sequence[Tenant], jobs: Sequence[Job],
              items: Sequence[Mapping[str, Any]], sampled: Sampled, wall: float, submitted_at: float, late: float,
              submit_errors: Sequence[str], cpu_op: float, log_text: str, t0_epoch: float) -> dict[str, Any]:
    hour = opts.minutes * 60
    phases: dict[str, int] = {}
    for i in items:
        phase = (i.get("status") or {}).get("phase") or "none"
        phases[phase] = phases.get(phase, 0) + 1
    wait = waits(items)
    top = [t.queue for t in tenants if not t.parent]
    shared_top = [q for q in top if q != "research-pool"]
    per_tenant = {}
    shares = share_summary(sampled.queues, [t.queue for t in tenants])
    offer = offered(jobs, hour)
    for t in tenants:
        w = wait.get(t.queue, [])
        p50, p99 = percentile(w, 0.5), percentile(w, 0.99)
        per_tenant[t.queue] = {
            "quota": t.quota, "offered_gpus": offer.get(t.queue, {}).get("gpus", 0.0),
            "jobs": int(offer.get(t.queue, {}).get("jobs", 0)), "admitted": len(w),
            "wait_p50_s": None if p50 is None else round(p50, 1), "wait_p99_s": None if p99 is None else round(p99, 1),
            **shares.get(t.queue, {})}
    timeline = [{"t": round(s.t, 1), "allocated": round(sum(s.allocated.get(q, 0.0) for q in top), 1),
                 "pool": s.allocated.get("research-pool", 0.0),
                 "shared": round(sum(s.allocated.get(q, 0.0) for q in shared_top), 1)} for s in sampled.queues]
    busy = [r["allocated"] / shape.total_gpus for r in timeline if r["t"] <= hour / opts.speed]
    held = allocation_from_jobs(job_intervals(items), [t0_epoch + s.t for s in sampled.queues],
                                {t.queue: t.parent for t in tenants if t.parent})
    for row, h in zip(timeline, held, strict=True):
        row["allocated_jobs"] = round(sum(h.get(q, 0.0) for q in top), 1)
    for t in tenants:
        if held:
            per_tenant[t.queue]["allocated_jobs_mean"] = round(sum(h.get(t.queue, 0.0) for h in held) / len(held), 1)
    last_cpu = sampled.cpu[-1] if sampled.cpu else (0.0, 0.0, 0.0, {})
    failed_cycles = log_text.count("Traceback")
    sme_quota = next(t.quota for t in tenants if t.queue == "sme")
    return {
        "shape": asdict(shape) | {"gpus": shape.total_gpus, "shared_gpus": shape.shared_gpus,
                                  "pool_gpus": shape.pool_gpus},
        "time": {"trace_minutes": opts.minutes, "speed": opts.speed,
                 "arrival_window_s": round(hour / opts.speed, 1), "durations_capped_at_trace_s": hour,
                 "wall_s": round(wall, 1), "submitted_by_s": round(submitted_at, 1),
                 "submit_late_max_s": round(late, 1), "sample_interval_s": opts.interval,
                 "samples": len(sampled.queues), "sample_errors": sampled.errors},
        "workload": {"jobs": len(jobs), "offered_gpus": round(sum(v["gpus"] for v in offer.values()), 1),
                     "offered_load_pct": round(100 * sum(v["gpus"] for v in offer.values()) / shape.total_gpus, 1),
                     "research_mix": mix_summary(jobs), "submit_errors": list(submit_errors)[:10],
                     "submit_error_count": len(submit_errors)},
        "outcome": {"phases": phases, "listed": len(items)},
        "allocation": {
            "mean_pct_during_arrivals": round(100 * sum(busy) / len(busy), 1) if busy else None,
            "mean_pct_from_jobs_during_arrivals": _mean_pct([r.get("allocated_jobs", 0.0) for r in timeline
                                                             if r["t"] <= hour / opts.speed], shape.total_gpus),
            "peak_pct": round(100 * max((r["allocated"] for r in timeline), default=0) / shape.total_gpus, 1),
            "timeline": timeline},
        "tenants": per_tenant,
        "sme_under_contention": contention(sampled.queues, top, shared_top, shape.shared_gpus) | {
            "quota": sme_quota, "quota_pct_of_shared": round(100 * sme_quota / shape.shared_gpus, 1)},
        "processes": {"operator_cpu_s": round(cpu_op, 1),
                      "operator_peak_rss_mib": round(max((c[2] for c in sampled.cpu), default=0.0), 1),
                      "operator_cores_mean": round(cpu_op / wall, 2) if wall else None,
                      "control_plane_cpu_s": {k: round(v, 1) for k, v in last_cpu[3].items()},
                      "operator_log_tracebacks": failed_cycles},
        "queue_status": status_lag(sampled, top),
        "samples": [{"t": round(s.t, 1), "allocated": s.allocated, "fair": s.fair, "pending": s.pending}
                    for s in sampled.queues],
        "status_samples": [{"t": round(s.t, 1), "allocated": s.allocated, "fair": s.fair, "pending": s.pending}
                           for s in sampled.status],
    }


def metric_values(port: int, token: str, names: Sequence[str]) -> dict[str, float]:
    """The label-less series `names` from the operator's /metrics (those it serves; {} when it did not answer)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            text = reply.read().decode()
    except (OSError, ValueError):
        return {}
    wanted = set(names)
    return {sample.name: float(sample.value) for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name in wanted and not sample.labels}


def status_lag(sampled: Sampled, top: Sequence[str]) -> dict[str, Any]:
    """How far the Queue objects' status trails the operator: the age of the oldest leaf's
    status.lastUpdated (also old when a tenant's numbers did not change), |allocated (status) - allocated
    (operator)| summed over the top queues, and how long the oldest status write waited in the operator
    (TrainingJobs' and Queues', from its /metrics)."""
    live = {s.t: s for s in sampled.queues}
    gaps = [abs(sum(s.allocated.get(q, 0.0) for q in top) - sum(live[s.t].allocated.get(q, 0.0) for q in top))
            for s in sampled.status if s.t in live]
    ages = sampled.status_age
    lags = [lag for _t, _due, lag in sampled.writes]
    return {"samples": len(sampled.status),
            "age_p50_s": None if not ages else round(percentile(ages, 0.5) or 0.0, 1),
            "age_max_s": round(max(ages), 1) if ages else None,
            "allocated_gap_mean_gpus": round(sum(gaps) / len(gaps), 1) if gaps else None,
            "allocated_gap_max_gpus": round(max(gaps), 1) if gaps else None,
            "write_lag_p50_s": None if not lags else round(percentile(lags, 0.5) or 0.0, 1),
            "write_lag_p99_s": None if not lags else round(percentile(lags, 0.99) or 0.0, 1),
            "write_lag_max_s": round(max(lags), 1) if lags else None,
            "writes_due_max": int(max((due for _t, due, _lag in sampled.writes), default=0)),
            "writes_series": [[round(t, 1), int(due), round(lag, 1)] for t, due, lag in sampled.writes]}


def plot(folder: Path, sampled: Sampled, tenants: Sequence[Tenant], shape: Shape) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    shown = [t for t in tenants if t.queue != "sme"]
    cols = 4
    rows = 1 + math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.4 * rows), squeeze=False)
    ts = [s.t for s in sampled.queues]
    top = [t.queue for t in tenants if not t.parent]
    ax = axes[0][0]
    for a in axes[0][2 if sampled.writes else 1:]:
        a.axis("off")
    ax.plot(ts, [100 * sum(s.allocated.get(q, 0) for q in top) / shape.total_gpus for s in sampled.queues])
    ax.set_title("cluster: allocated / all GPUs (%)", fontsize=9)
    ax.set_ylim(0, 105)
    if sampled.writes:  # the operator's status backlog (its /metrics): how far the API server trails
        ax = axes[0][1]
        wt = [t for t, _due, _lag in sampled.writes]
        ax.plot(wt, [due for _t, due, _lag in sampled.writes], label="statuses waiting")
        ax.set_title("status writes: waiting (—), oldest waited s (--)", fontsize=9)
        ax.tick_params(labelsize=7)
        lag_ax = ax.twinx()
        lag_ax.plot(wt, [lag for _t, _due, lag in sampled.writes], "--", color="tab:red")
        lag_ax.tick_params(labelsize=7)
    for i, t in enumerate(shown):
        ax = axes[1 + i // cols][i % cols]
        ax.plot(ts, [s.allocated.get(t.queue, 0) for s in sampled.queues], label="allocated")
        ax.plot(ts, [s.fair.get(t.queue, 0) for s in sampled.queues], "--", label="fairShare")
        ax.axhline(t.quota, color="grey", lw=0.6, ls=":", label="quota")
        ax.set_title(f"{t.queue} (GPUs)", fontsize=9)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=7)
    for j in range(len(shown), (rows - 1) * cols):
        axes[1 + j // cols][j % cols].axis("off")
    fig.supxlabel("seconds since the first arrival (wall clock, compressed)", fontsize=9)
    fig.tight_layout()
    path = folder / "factory-allocation.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# Rendering


def render(report: Mapping[str, Any], console: Any) -> None:
    from rich.table import Table

    s, tm, w = report["shape"], report["time"], report["workload"]
    console.print(f"[bold]AI factory[/]: {s['nodes']} nodes x {NODE_GPUS} GPUs = {s['gpus']} GPUs "
                  f"({s['research_nodes']} nodes / {s['pool_gpus']} GPUs reserved for research; "
                  f"racks of {s['nodes_per_rack']}, {s['racks_per_spine']} racks per spine)")
    console.print(f"{tm['trace_minutes']:g} trace minutes of arrivals compressed {tm['speed']:g}x into "
                  f"{tm['arrival_window_s']:g} s (durations and gaps / {tm['speed']:g}, durations capped at "
                  f"{tm['durations_capped_at_trace_s']:g} trace s); {w['jobs']} TrainingJobs offering "
                  f"{w['offered_gpus']:g} GPUs = {w['offered_load_pct']:g} % of the cluster; wall {tm['wall_s']:g} s; "
                  f"submitted by {tm['submitted_by_s']:g} s (at most {tm['submit_late_max_s']:g} s late); "
                  f"{w['submit_error_count']} refused")
    mix = Table(title="research jobs (Kalos mix)")
    for col in ("kind", "jobs", "% jobs", "% GPU time", "GPUs"):
        mix.add_column(col, justify="right")
    for kind, row in w["research_mix"].items():
        mix.add_row(kind, str(row["jobs"]), f"{row['jobs_pct']:g}", f"{row['gpu_time_pct']:g}",
                    f"{row['gpus_min']:g}-{row['gpus_max']:g}")
    console.print(mix)
    a = report["allocation"]
    console.print(f"allocation: mean {a['mean_pct_during_arrivals']} % of all GPUs during the arrivals (by the jobs' "
                  f"admission and end on the API server: {a.get('mean_pct_from_jobs_during_arrivals')} %), peak "
                  f"{a['peak_pct']} %; outcome {report['outcome']['phases']}")
    t = Table(title=f"tenants (waits in wall seconds; x{tm['speed']:g} for trace seconds; GPUs averaged over "
                    f"{tm['samples']} samples)")
    for col in ("queue", "quota", "offered", "jobs", "admitted", "wait p50", "wait p99", "alloc mean",
                "fair mean", "|alloc-fair| mean", "same, jobs waiting", "held (jobs) mean"):
        t.add_column(col, justify="right")
    for q, row in report["tenants"].items():
        t.add_row(q, str(row["quota"]), f"{row['offered_gpus']:g}", str(row["jobs"]), str(row["admitted"]),
                  _f(row["wait_p50_s"]), _f(row["wait_p99_s"]), _f(row.get("allocated_mean")),
                  _f(row.get("fair_mean")), _f(row.get("gap_mean")), _f(row.get("gap_waiting_mean")),
                  _f(row.get("allocated_jobs_mean")))
    console.print(t)
    c = report["sme_under_contention"]
    if c.get("samples"):
        console.print(f"SME under contention ({c['samples']} samples with >= 90 % of the shared GPUs allocated and "
                      f"jobs pending; SME pending in {c['samples_sme_pending']}): allocated {c['allocated_mean']} GPUs "
                      f"= {c['share_of_shared_pct']} % of the shared GPUs, fair share {c['fair_mean']}, quota "
                      f"{c['quota']} ({c['quota_pct_of_shared']} %)")
    else:
        console.print("SME under contention: no sample had >= 90 % of the shared GPUs allocated with jobs pending")
    p = report["processes"]
    cp = ", ".join(f"{k} {v:g}" for k, v in p["control_plane_cpu_s"].items())
    console.print(f"leitstand run: {p['operator_cpu_s']:g} CPU s ({p['operator_cores_mean']} cores on average), "
                  f"peak RSS {p['operator_peak_rss_mib']:g} MiB, {p['operator_log_tracebacks']} tracebacks in its log; "
                  f"control plane CPU s: {cp}")
    qs = report.get("queue_status") or {}
    if qs.get("samples"):
        console.print(f"Queue objects' status vs the operator's view (/v1/queues): status.lastUpdated age p50 "
                      f"{qs['age_p50_s']} s, max {qs['age_max_s']} s; allocated GPUs (top queues) off by "
                      f"{qs['allocated_gap_mean_gpus']} on average, at most {qs['allocated_gap_max_gpus']}")
    if qs.get("write_lag_p50_s") is not None:
        console.print(f"status writes waiting in the operator (/metrics): oldest waited p50 {qs['write_lag_p50_s']} s, "
                      f"p99 {qs['write_lag_p99_s']} s, max {qs['write_lag_max_s']} s; at most "
                      f"{qs['writes_due_max']} statuses waiting")
    if report.get("plot"):
        console.print(f"plot: {report['plot']}")


def _mean_pct(values: Sequence[float], total: float) -> float | None:
    return round(100 * sum(values) / len(values) / total, 1) if values else None


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def factory_bench(opts: Options, as_json: bool) -> int:
    from rich.console import Console

    console = Console(stderr=as_json, width=None if Console().is_terminal else 170)
    try:
        report = run(opts, lambda m: console.print(f"[dim]{m}[/]"))
    except FactoryError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    if as_json:
        print(json.dumps(report))
    else:
        render(report, console)
    ok = report["outcome"]["phases"].get("Succeeded", 0) == report["workload"]["jobs"]
    return 0 if ok else 1
