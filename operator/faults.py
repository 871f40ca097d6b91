"""`leitstand bench crash`: `kill -9` of `leitstand run` at random moments of a job burst, restarted each
time, with every outcome checked from the pods on the API server.

The campaign: a local cluster (started here unless one runs), the API and two tenant queues
installed, the operator started as `leitstand-operator`; the tenants submit a burst of TrainingJobs
(one-GPU jobs, whole-node jobs, gangs of 2 and 4 × 8 GPUs, half-GPU slices; a few seconds each);
meanwhile a sampler lists every pod twice a second and checks that no GPU is booked twice (per node:
the GPUs pods request never exceed the node's, and no GPU index carries more than 1000 milli-GPU of
pods, whole or shared) and how long any gang stays partly bound; at `kills` random moments the
operator gets SIGKILL and is started again at once. At the end every job must have Succeeded.

Called by the CLI (`leitstand bench crash`) for the numbers in the closing notes, and by the e2e tier
with a small burst. Everything it judges comes from the API server, never from the operator.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leitstand.operator.cluster import controlplane
from leitstand.operator.cluster.kubeapi import KubeApi
from leitstand.operator.cluster.layout import repo_root, run_dir
from leitstand.operator.cluster.nodes import ClusterSpec, NodePool, Topology
from leitstand.operator.service.launcher import OperatorProcess, start_operator

Report = Callable[[str], None]
GROUP_PATH = "/apis/leitstand.dev/v1alpha1"
DEPLOY = repo_root() / "deploy"
TERMINAL = ("Succeeded", "Failed")

SHAPES: tuple[tuple[str, int, dict[str, Any], float], ...] = (
    # (name, replicas, GPU fields, weight in the mix)
    ("one", 1, {"gpus": 1}, 0.45),
    ("node", 1, {"gpus": 8}, 0.15),
    ("pair", 2, {"gpus": 8}, 0.12),
    ("quad", 4, {"gpus": 8}, 0.08),
    ("half", 1, {"gpuFraction": 0.5}, 0.20),
)

CONFIG = """\
scheduler: {min_runtime_seconds: 3}
cycle_min_interval_seconds: 0.1
"""


@dataclass
class Sample:
    t: float
    overbooked: list[str]
    partial: set[str]


@dataclass
class CampaignResult:
    jobs: int
    succeeded: int
    failed: list[str]
    unfinished: list[str]
    kills: list[float]
    restart_to_leading_seconds: list[float]
    samples: int
    overbooked: list[str]
    max_partial_seconds: float
    max_partial_outside_crash_seconds: float
    seconds: float
    operator_restarts: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.unfinished and not self.overbooked and self.succeeded == self.jobs


def _token(run: Path, user: str) -> str:
    return next(line.split(",")[0] for line in (run / "tokens.csv").read_text().splitlines()
                if line.split(",")[1] == user)


def api_as(run: Path, user: str) -> KubeApi:
    state = json.loads((run / "state.json").read_text())
    return KubeApi(state["server"], _token(run, user), str(run / "pki" / "ca.crt"))


def burst(count: int, seed: int, seconds: tuple[int, int] = (3, 10)) -> list[dict[str, Any]]:
    """`count` TrainingJobs of the mix, alternating tenants, durations drawn from `seconds`."""
    rng = random.Random(seed)
    names, weights = [s[0] for s in SHAPES], [s[3] for s in SHAPES]
    jobs = []
    for i in range(count):
        shape = SHAPES[names.index(rng.choices(names, weights)[0])]
        tenant = ("tenant-a", "tenant-b")[i % 2]
        jobs.append({
            "apiVersion": "leitstand.dev/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": f"burst-{i:04d}-{shape[0]}", "namespace": tenant,
                         "labels": {"leitstand.dev/campaign": "crash"}},
            "spec": {
                "queue": tenant,
                "replicas": shape[1],
                **shape[2],
                "template": {
                    "metadata": {"annotations": {"leitstand.dev/sim-duration": f"{rng.randint(*seconds)}s"}},
                    "spec": {"containers": [{"name": "main", "image": "registry.example/train:latest"}]},
                },
            },
        })
    return jobs


def check_pods(pods: list[dict[str, Any]], capacity: dict[str, int]) -> tuple[list[str], set[str]]:
    """(over-booking findings, jobs partly bound) in one list of pods."""
    requested: dict[str, int] = defaultdict(int)
    milli: dict[tuple[str, int], int] = defaultdict(int)
    holders: dict[tuple[str, int], list[str]] = defaultdict(list)
    requesters: dict[str, list[str]] = defaultdict(list)
    findings: list[str] = []
    bound: dict[str, int] = defaultdict(int)
    members: dict[str, int] = defaultdict(int)
    for pod in pods:
        meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
        labels = meta.get("labels") or {}
        job = labels.get("leitstand.dev/job")
        if job and not meta.get("deletionTimestamp"):
            key = f"{meta['namespace']}/{job}"
            members[key] += 1
            bound[key] += bool(spec.get("nodeName"))
        node = spec.get("nodeName")
        if not node or status.get("phase") in TERMINAL:
            continue
        annotations = meta.get("annotations") or {}
        gpus = sum(int((c.get("resources") or {}).get("limits", {}).get("nvidia.com/gpu", 0))
                   for c in spec.get("containers") or ())
        requested[node] += gpus
        if gpus:
            where = annotations.get("leitstand.dev/gpus", "")
            requesters[node].append(f"{meta['namespace']}/{meta['name']}={gpus}@{where}")
        indices = [int(g) for g in annotations.get("leitstand.dev/gpus", "").split(",") if g.strip()]
        if labels.get("leitstand.dev/role") == "gpu-reservation":
            continue  # holds a shared GPU for other schedulers; the fractions on it are counted below
        share = round(float(annotations["leitstand.dev/gpu-fraction"]) * 1000) if (
            "leitstand.dev/gpu-fraction" in annotations) else 1000
        for g in indices:
            milli[(node, g)] += share
            holders[(node, g)].append(f"{meta['namespace']}/{meta['name']}")
    for node, gpus in requested.items():
        if gpus > capacity.get(node, 0):
            findings.append(f"node {node}: pods request {gpus} GPUs, the node has {capacity.get(node, 0)} "
                            f"({', '.join(sorted(requesters[node]))})")
    for (node, g), used in milli.items():
        if used > 1000:
            findings.append(f"node {node} GPU {g}: {used} milli-GPU booked by {', '.join(sorted(holders[(node, g)]))}")
    partial = {k for k, n in bound.items() if 0 < n < members[k]}
    return findings, partial


def run_campaign(
    *,
    jobs: int = 200,
    kills: int = 3,
    seed: int = 7,
    nodes: int = 16,
    timeout_seconds: float = 600.0,
    window_seconds: float = 30.0,
    report: Report = print,
) -> CampaignResult:
    run = run_dir()
    started_cluster = False
    if not controlplane.status().get("running"):
        spec = ClusterSpec(pools=(NodePool(count=nodes),), topology=Topology(nodes_per_rack=4, racks_per_spine=2))
        controlplane.up(spec, report=report)
        started_cluster = True
    operator: OperatorProcess | None = None
    stop = threading.Event()
    samples: list[Sample] = []
    try:
        admin = api_as(run, "admin")
        _install(run, admin)
        config = run / "crash-config.yaml"
        config.write_text(CONFIG)
        log = run / "logs" / "leitstand-run-crash.log"
        operator = start_operator(run / "leitstand-operator.kubeconfig", log, config=config)
        if not operator.wait_for_log("leading as", 120):
            raise RuntimeError(f"leitstand run did not lead; log {log}:\n{operator.log_text()[-2000:]}")
        capacity = {n["metadata"]["name"]: int(n["status"]["allocatable"].get("nvidia.com/gpu", 0))
                    for n in admin.get("/api/v1/nodes")["items"]}
        sampler_api = api_as(run, "admin")
        t0 = time.monotonic()

        def sample() -> None:
            while not stop.is_set():
                pods = sampler_api.get("/api/v1/pods")["items"]
                findings, partial = check_pods(pods, capacity)
                samples.append(Sample(time.monotonic() - t0, findings, partial))
                stop.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        manifests = burst(jobs, seed)
        clients = {t: api_as(run, t) for t in ("tenant-a", "tenant-b")}
        for job in manifests:
            ns = job["metadata"]["namespace"]
            clients[ns].create(f"{GROUP_PATH}/namespaces/{ns}/trainingjobs", job, exist_ok=False)
        report(f"crash: submitted {jobs} TrainingJobs in {time.monotonic() - t0:.1f} s")
        rng = random.Random(seed + 1)
        kill_at = sorted(rng.uniform(2.0, window_seconds) for _ in range(kills))
        killed: list[float] = []
        back: list[float] = []
        keys = [f"{j['metadata']['namespace']}/{j['metadata']['name']}" for j in manifests]
        phases: dict[str, str] = {}
        while time.monotonic() - t0 < timeout_seconds:
            now = time.monotonic() - t0
            if kill_at and now >= kill_at[0]:
                kill_at.pop(0)
                offset = len(operator.log_text())
                operator.kill()
                killed.append(now)
                report(f"crash: kill -9 of leitstand run at {now:.1f} s (pid {operator.pid}); restarting")
                operator = start_operator(run / "leitstand-operator.kubeconfig", log, config=config)
                operator.wait_for_log("leading as", 120, after=offset)
                back.append(time.monotonic() - t0 - now)
            items = admin.get(f"{GROUP_PATH}/trainingjobs?labelSelector=leitstand.dev%2Fcampaign%3Dcrash")["items"]
            phases = {f"{j['metadata']['namespace']}/{j['metadata']['name']}": (j.get("status") or {}).get(
                "phase", "") for j in items}
            if not kill_at and all(phases.get(k) in TERMINAL for k in keys):
                break
            time.sleep(1.0)
        seconds = time.monotonic() - t0
        stop.set()
        sampler.join(5)
        for api in (admin, sampler_api, *clients.values()):
            api.close_all()
    finally:
        stop.set()
        if operator is not None:
            operator.stop()
            kept = run.parent / f"{run.name}-leitstand-run-crash.log"
            kept.write_text(operator.log_text())
            report(f"crash: operator log kept in {kept}")
        if started_cluster:
            controlplane.down(report=report)
    first_seen: dict[str, float] = {}
    for s in samples:
        for finding in s.overbooked:
            first_seen.setdefault(finding, s.t)
    overbooked = [f"{f} (first seen at {t:.1f} s)" for f, t in sorted(first_seen.items(), key=lambda x: x[1])]
    partial_max, partial_clean = _partial_streaks(samples, killed, back)
    return CampaignResult(
        jobs=jobs,
        succeeded=sum(1 for k in keys if phases.get(k) == "Succeeded"),
        failed=sorted(k for k in keys if phases.get(k) == "Failed"),
        unfinished=sorted(k for k in keys if phases.get(k) not in TERMINAL),
        kills=[round(k, 1) for k in killed],
        restart_to_leading_seconds=[round(b, 1) for b in back],
        samples=len(samples),
        overbooked=overbooked,
        max_partial_seconds=round(partial_max, 1),
        max_partial_outside_crash_seconds=round(partial_clean, 1),
        seconds=round(seconds, 1),
        operator_restarts=len(killed),
    )


def _install(run: Path, admin: KubeApi) -> None:
    import subprocess

    from leitstand.operator.cluster.layout import cache_paths

    kubectl = [str(cache_paths().binary("kubectl")), f"--kubeconfig={run / 'admin.kubeconfig'}"]
    for args in (
        ["apply", "-f", str(DEPLOY / "namespace.yaml"), "-f", str(DEPLOY / "crds"),
         "-f", str(DEPLOY / "priorityclasses.yaml")],
        ["wait", "--for=condition=Established", "--timeout=60s", "crd/trainingjobs.leitstand.dev",
         "crd/queues.leitstand.dev"],
        ["apply", "-f", str(DEPLOY / "examples" / "queues.yaml")],
    ):
        proc = subprocess.run([*kubectl, *args], capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr}")


def _partial_streaks(samples: list[Sample], killed: list[float], back: list[float]) -> tuple[float, float]:
    """Longest time any one job was seen partly bound; and the same ignoring streaks that overlap a
    crash window (kill → the restarted process leads + 2 s for its first cycles)."""
    windows = [(k, k + b + 2.0) for k, b in zip(killed, back, strict=False)]
    since: dict[str, float] = {}
    worst = clean = 0.0
    for s in samples:
        for job in list(since):
            if job not in s.partial:
                start = since.pop(job)
                length = s.t - start
                worst = max(worst, length)
                if not any(a <= s.t and start <= b for a, b in windows):
                    clean = max(clean, length)
        for job in s.partial:
            since.setdefault(job, s.t)
    return worst, clean


def crash(
    jobs: int = 200,
    kills: int = 3,
    seed: int = 7,
    nodes: int = 16,
    timeout: float = 900.0,
    as_json: bool = False,
    window: float = 30.0,
) -> None:
    """kill -9 of leitstand run at random moments of a TrainingJob burst; every outcome checked on the API server."""
    import typer

    result = run_campaign(jobs=jobs, kills=kills, seed=seed, nodes=nodes, timeout_seconds=timeout,
                          window_seconds=window, report=typer.echo)
    if as_json:
        typer.echo(json.dumps({**result.__dict__, "ok": result.ok}, indent=2))
    else:
        typer.echo(
            f"crash: {result.succeeded}/{result.jobs} jobs Succeeded in {result.seconds} s; "
            f"{len(result.failed)} Failed, {len(result.unfinished)} unfinished; "
            f"kill -9 at {result.kills} s, leading again after {result.restart_to_leading_seconds} s; "
            f"{result.samples} samples of all pods: {len(result.overbooked)} over-bookings; "
            f"longest partly-bound gang {result.max_partial_seconds} s "
            f"({result.max_partial_outside_crash_seconds} s outside crash windows)"
        )
        for finding in result.overbooked[:20]:
            typer.echo(f"  over-booked: {finding}")
    if not result.ok:
        raise typer.Exit(1)
