"""`leitstand bench crash`: `kill -9` of `leitstand run` at random moments of a job burst, restarted each
time, with every outcome checked from the pods on the API server.

The campaign: a local cluster (started here unless one runs), the API and two tenant queues
installed, the operator started as `leitstand-operator`; the tenants submit a burst of TrainingJobs
(one-GPU jobs, whole-node jobs, gangs of 2 and 4 × 8 GPUs, half-GPU slices; a few seconds each);
meanwhile a sampler lists every pod twice a second and checks that no GPU is booked twice (per node:
the GPUs pods request never exceed the node's, and no GPU index carries more than 1000 milli-GPU of
pods, whole or shared) and how long any gang stays partly bound; at `kills` random moments the
operator gets SIGKILL and is started again at once. At the end every job must have Succeeded.

The same judge serves three more campaigns (below `run_campaign`, with a shared `Harness`): two
replicas with `kill -9` of the Lease holder (`run_failover`), kube-apiserver or etcd restarted
mid-burst (`run_restarts`, through `controlplane.restart`), and nodes made NotReady (held so by the
KWOK stages in deploy/kwok/sim-node-not-ready.yaml) or deleted while gangs run (`run_node_faults`);
docs/faults.md describes them and their measured results.

Called by the CLI (`leitstand bench crash | failover | restart | nodes`) for the numbers in the notes,
and by the e2e tier with small bursts. Everything it judges comes from the API server, never from the
operator. It must not kill anything but the processes it started (by PID) and the component it was
asked to restart.
"""

from __future__ import annotations

import functools
import http.client
import json
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from leitstand.operator.cluster import controlplane
from leitstand.operator.cluster.kubeapi import ApiError, KubeApi
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


def ensure_cluster(nodes: int, report: Report) -> bool:
    """Start a cluster of `nodes` 8-GPU nodes (racks of 4) in the run folder unless one runs there;
    True when this call started it (so the caller stops it again)."""
    if controlplane.status().get("running"):
        return False
    spec = ClusterSpec(pools=(NodePool(count=nodes),), topology=Topology(nodes_per_rack=4, racks_per_spine=2))
    controlplane.up(spec, report=report)
    return True


def lead_or_raise(operator: OperatorProcess, timeout_seconds: float, log: Path | None = None) -> None:
    """Wait until `operator` logs that it leads; else raise with the tail of its log."""
    if not operator.wait_for_log("leading as", timeout_seconds):
        where = f"; log {log}" if log is not None else ""
        raise RuntimeError(f"leitstand run did not lead{where}:\n{operator.log_text()[-2000:]}")


def _token(run: Path, user: str) -> str:
    return next(line.split(",")[0] for line in (run / "tokens.csv").read_text().splitlines()
                if line.split(",")[1] == user)


def api_as(run: Path, user: str) -> KubeApi:
    state = json.loads((run / "state.json").read_text())
    return KubeApi(state["server"], _token(run, user), str(run / "pki" / "ca.crt"))


def burst(count: int, seed: int, seconds: tuple[int, int] = (3, 10), campaign: str = "crash") -> list[dict[str, Any]]:
    """`count` TrainingJobs of the mix, alternating tenants, durations drawn from `seconds`, labelled
    `leitstand.dev/campaign=<campaign>` (names `burst-…` for the crash campaign, `<campaign>-…` else)."""
    prefix = "burst" if campaign == "crash" else campaign
    rng = random.Random(seed)
    names, weights = [s[0] for s in SHAPES], [s[3] for s in SHAPES]
    jobs = []
    for i in range(count):
        shape = SHAPES[names.index(rng.choices(names, weights)[0])]
        tenant = ("tenant-a", "tenant-b")[i % 2]
        jobs.append({
            "apiVersion": "leitstand.dev/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": f"{prefix}-{i:04d}-{shape[0]}", "namespace": tenant,
                         "labels": {"leitstand.dev/campaign": campaign}},
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
    started_cluster = ensure_cluster(nodes, report)
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
        lead_or_raise(operator, 120, log)
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


# -- failover, control-plane restarts, NotReady nodes ------------------------------------------------
#
# Three more campaigns on the same judge: a burst of TrainingJobs, every pod on the API server
# sampled twice a second (over-booked GPUs, half-bound gangs, two live pods for one replica), and a
# fault injected while the burst runs. The harness below holds what they share.

LEASE_PATH = "/apis/coordination.k8s.io/v1/namespaces/leitstand-system/leases/leitstand-scheduler"
SAMPLE_ERRORS = (OSError, http.client.HTTPException, ApiError, ValueError)
"""What a request may raise while kube-apiserver or etcd is being restarted."""


def duplicate_replicas(pods: list[dict[str, Any]]) -> list[str]:
    """Replicas with more than one live pod (not being deleted, not Failed): a replica started twice."""
    live: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for pod in pods:
        meta = pod["metadata"]
        labels = meta.get("labels") or {}
        job = labels.get("leitstand.dev/job")
        if not job or labels.get("leitstand.dev/role") == "gpu-reservation" or meta.get("deletionTimestamp"):
            continue
        if (pod.get("status") or {}).get("phase") == "Failed":
            continue
        live[(meta["namespace"], job, labels.get("leitstand.dev/replica", "0"))].append(meta["name"])
    return [f"{ns}/{job} replica {replica}: {', '.join(sorted(names))}"
            for (ns, job, replica), names in sorted(live.items()) if len(names) > 1]


def bound_pods(pods: list[dict[str, Any]]) -> set[str]:
    """namespace/name of every pod with a node."""
    return {f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in pods if p["spec"].get("nodeName")}


def live_placements(pods: list[dict[str, Any]]) -> dict[str, str]:
    """namespace/name → node of every bound pod that is neither finished nor being deleted."""
    return {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p["spec"]["nodeName"] for p in pods
            if p["spec"].get("nodeName") and not p["metadata"].get("deletionTimestamp")
            and (p.get("status") or {}).get("phase") not in TERMINAL}


@dataclass
class FaultSample:
    t: float
    overbooked: list[str]
    partial: set[str]
    duplicates: list[str]
    bound: set[str]
    live: dict[str, str] = field(default_factory=dict)
    """Pods bound and not finished or being deleted → their node."""


@dataclass
class FaultResult:
    """What a fault campaign found; every number comes from the API server."""

    campaign: str
    jobs: int
    succeeded: int
    failed: list[str]
    unfinished: list[str]
    seconds: float
    samples: int
    sample_errors: int
    overbooked: list[str]
    duplicates: list[str]
    max_partial_seconds: float
    faults: list[dict[str, Any]]
    """One entry per injected fault: when, what, and the measured recovery."""
    operator_exits: list[str]
    """Operator processes that ended by themselves (and were started again, as a kubelet would)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (not self.failed and not self.unfinished and not self.overbooked and not self.duplicates
                and self.succeeded == self.jobs and not self.extra.get("problems"))


class Harness:
    """A cluster (started here unless one runs), the API and queues installed, a sampler thread over
    all pods, the burst submitted and followed to the end. Operators are started by the campaign."""

    def __init__(self, name: str, nodes: int, report: Report) -> None:
        self.name = name
        self.report = report
        self.run: Path = run_dir()
        self.started_cluster = ensure_cluster(nodes, report)
        self.admin = api_as(self.run, "admin")
        _install(self.run, self.admin)
        self.capacity = {n["metadata"]["name"]: int(n["status"]["allocatable"].get("nvidia.com/gpu", 0))
                         for n in self.admin.get("/api/v1/nodes")["items"]}
        self.samples: list[FaultSample] = []
        self.sample_errors = 0
        self.operators: dict[str, OperatorProcess] = {}
        self.configs: dict[str, Path] = {}
        self.exits: list[str] = []
        self.keys: list[str] = []
        self.phases: dict[str, str] = {}
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    def operator_config(self, identity: str, extra: str = "") -> Path:
        """The campaign's service config for one replica: its own API port (replicas serve side by side)."""
        port = controlplane.free_ports(["api"])["api"]
        path = self.run / f"{self.name}-{identity}.yaml"
        path.write_text(CONFIG + f"api: {{port: {port}}}\n" + extra)
        return path

    def start_operator(self, identity: str, config: Path) -> OperatorProcess:
        log = self.run / "logs" / f"leitstand-run-{self.name}-{identity}.log"
        process = start_operator(self.run / "leitstand-operator.kubeconfig", log, identity=identity, config=config)
        self.operators[identity] = process
        self.configs[identity] = config
        return process

    def watch_operators(self) -> None:
        """Start again any operator that ended by itself (as its Deployment would), and say so."""
        for identity, process in list(self.operators.items()):
            if not process.alive():
                code = process.proc.returncode
                self.exits.append(f"{identity} exited with code {code} at {self.now():.1f} s")
                self.report(f"{self.name}: {identity} exited with code {code}; starting it again")
                self.start_operator(identity, self.configs[identity])

    def start_sampler(self) -> None:
        sampler_api = api_as(self.run, "admin")
        sampler_api.timeout_seconds = 10.0

        def sample() -> None:
            while not self._stop.is_set():
                try:
                    pods = sampler_api.get("/api/v1/pods")["items"]
                except SAMPLE_ERRORS:
                    self.sample_errors += 1
                    sampler_api.close()
                    self._stop.wait(0.5)
                    continue
                findings, partial = check_pods(pods, self.capacity)
                self.samples.append(FaultSample(self.now(), findings, partial, duplicate_replicas(pods),
                                                bound_pods(pods), live_placements(pods)))
                self._stop.wait(0.5)
            sampler_api.close_all()

        self._sampler = threading.Thread(target=sample, daemon=True, name=f"{self.name}-sampler")
        self._sampler.start()

    def submit(self, manifests: list[dict[str, Any]]) -> None:
        clients = {t: api_as(self.run, t) for t in ("tenant-a", "tenant-b")}
        for job in manifests:
            ns = job["metadata"]["namespace"]
            clients[ns].create(f"{GROUP_PATH}/namespaces/{ns}/trainingjobs", job, exist_ok=False)
            self.keys.append(f"{ns}/{job['metadata']['name']}")
        for api in clients.values():
            api.close_all()
        self.report(f"{self.name}: submitted {len(manifests)} TrainingJobs in {self.now():.1f} s")

    def poll_phases(self) -> bool:
        """Read every job's phase; True when all are terminal. False (and nothing read) if the API fails."""
        try:
            items = self.admin.get(f"{GROUP_PATH}/trainingjobs?labelSelector=leitstand.dev%2Fcampaign%3D{self.name}")
        except SAMPLE_ERRORS:
            self.admin.close()
            return False
        self.phases = {f"{j['metadata']['namespace']}/{j['metadata']['name']}": (j.get("status") or {}).get(
            "phase", "") for j in items["items"]}
        return all(self.phases.get(k) in TERMINAL for k in self.keys)

    def first_new_bind(self, before: set[str], since: float, timeout_seconds: float) -> float | None:
        """Seconds from `since` until a sample shows a pod bound that was not bound in `before`."""
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            for s in reversed(self.samples):
                if s.t < since:
                    break
                if s.bound - before:
                    return round(min(x.t for x in self.samples if x.t >= since and x.bound - before) - since, 1)
            self.watch_operators()
            time.sleep(0.2)
        return None

    def latest_bound(self) -> set[str]:
        return self.samples[-1].bound if self.samples else set()

    def finish(self, seconds: float, faults: list[dict[str, Any]], extra: dict[str, Any]) -> FaultResult:
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(15)
        first_seen: dict[str, float] = {}
        dup_seen: dict[str, float] = {}
        for s in self.samples:
            for finding in s.overbooked:
                first_seen.setdefault(finding, s.t)
            for dup in s.duplicates:
                dup_seen.setdefault(dup, s.t)
        partial_max, _ = _partial_streaks([Sample(s.t, s.overbooked, s.partial) for s in self.samples], [], [])
        return FaultResult(
            campaign=self.name,
            jobs=len(self.keys),
            succeeded=sum(1 for k in self.keys if self.phases.get(k) == "Succeeded"),
            failed=sorted(k for k in self.keys if self.phases.get(k) == "Failed"),
            unfinished=sorted(k for k in self.keys if self.phases.get(k) not in TERMINAL),
            seconds=round(seconds, 1),
            samples=len(self.samples),
            sample_errors=self.sample_errors,
            overbooked=[f"{f} (first seen at {t:.1f} s)" for f, t in sorted(first_seen.items(), key=lambda x: x[1])],
            duplicates=[f"{d} (first seen at {t:.1f} s)" for d, t in sorted(dup_seen.items(), key=lambda x: x[1])],
            max_partial_seconds=round(partial_max, 1),
            faults=faults,
            operator_exits=list(self.exits),
            extra=extra,
        )

    def close(self) -> None:
        self._stop.set()
        for identity, process in self.operators.items():
            process.stop()
            kept = self.run.parent / f"{self.run.name}-{self.name}-{identity}.log"
            kept.write_text(process.log_text())
            self.report(f"{self.name}: log of {identity} kept in {kept}")
        self.admin.close_all()
        if self.started_cluster:
            controlplane.down(report=self.report)


def lease_holder(api: KubeApi) -> str | None:
    try:
        status, lease = api.request("GET", LEASE_PATH)
    except SAMPLE_ERRORS:
        api.close()
        return None
    return ((lease.get("spec") or {}).get("holderIdentity") or None) if status == 200 else None


def read_api(port: int, path: str, token: str) -> tuple[int, dict[str, str], Any]:
    """GET `path` from a replica's HTTP API: (status, lower-case headers, decoded JSON or None)."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, {k.lower(): v for k, v in reply.headers.items()}, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, None
    except (OSError, ValueError):
        return 0, {}, None


def api_port(config: Path) -> int:
    import yaml

    return int(yaml.safe_load(config.read_text())["api"]["port"])


def follower_answers(port: int, token: str) -> str | None:
    """None if the replica on `port` is ready, says it does not lead, and lists jobs; else what failed."""
    status, headers, body = read_api(port, "/readyz", token)
    if status != 200 or not body or body.get("leading") is not False:
        return f"/readyz answered {status} {body}"
    status, headers, body = read_api(port, "/v1/jobs?limit=5", token)
    if status != 200 or headers.get("x-leitstand-leading") != "false" or not isinstance(body, dict):
        return f"/v1/jobs answered {status} (X-Leitstand-Leading {headers.get('x-leitstand-leading')})"
    return None


def run_failover(
    *,
    jobs: int = 200,
    kills: int = 5,
    seed: int = 11,
    nodes: int = 16,
    seconds: tuple[int, int] = (10, 30),
    lease_seconds: int = 15,
    timeout_seconds: float = 900.0,
    report: Report = print,
) -> FaultResult:
    """Two replicas of `leitstand run` with the Lease; `kills` times the leader gets SIGKILL while the
    burst runs (the next kill once the killed one is back as a ready follower). Per kill: how long until
    the Lease names the other replica and until that replica binds its first pod (from the pods on the
    API server); the follower's /readyz and reads are checked before every kill. `lease_seconds` other
    than the default 15 scales the renew deadline (2/3 of it) and the retry period (1/7.5) alike."""
    harness = Harness("failover", nodes, report)
    identities = ("leitstand-a", "leitstand-b")
    faults: list[dict[str, Any]] = []
    problems: list[str] = []
    lease = (f"lease_seconds: {lease_seconds}\nrenew_deadline_seconds: {lease_seconds * 2 / 3:.2f}\n"
             f"retry_seconds: {lease_seconds / 7.5:.2f}\n")
    try:
        configs = {i: harness.operator_config(i, lease) for i in identities}
        for identity in identities:
            harness.start_operator(identity, configs[identity])
        token = _token(harness.run, "admin")
        holder = _wait_for(lambda: lease_holder(harness.admin), 180)
        if holder not in identities:
            raise RuntimeError(f"failover: no replica leads after 180 s (Lease holder {holder!r})")
        harness.start_sampler()
        harness.submit(burst(jobs, seed, seconds, campaign="failover"))
        rng = random.Random(seed + 1)
        next_kill = harness.now() + rng.uniform(3.0, 8.0)
        while harness.now() < timeout_seconds:
            harness.watch_operators()
            done = harness.poll_phases()
            if len(faults) < kills and harness.now() >= next_kill:
                leader = lease_holder(harness.admin)
                follower = next((i for i in identities if i != leader), None)
                if leader not in identities or follower is None:
                    time.sleep(0.5)
                    continue
                port = api_port(configs[follower])
                if _wait_for(functools.partial(_follower_ok, port, token), 60) is None:
                    problems.append(f"before kill {len(faults) + 1}: follower {follower}: "
                                    f"{follower_answers(port, token)}")
                killed_at = harness.now()
                harness.operators.pop(leader).kill()  # started again once the other one leads
                report(f"failover: kill -9 of the leader {leader} at {killed_at:.1f} s")
                time.sleep(1.0)  # binds the dead process had sent have landed by now
                before = _wait_for(functools.partial(_bound_now, harness.admin), 30) or set()
                taken = _wait_for(functools.partial(_holds, harness.admin, follower), 60)
                lease_s = round(harness.now() - killed_at, 1) if taken else None
                bind_s = harness.first_new_bind(before, killed_at, 60)
                faults.append({"at": round(killed_at, 1), "killed": leader, "new_leader": follower,
                               "lease_taken_after_seconds": lease_s, "first_bind_after_seconds": bind_s})
                report(f"failover: {follower} holds the Lease {lease_s} s after the kill, "
                       f"binds its first pod after {bind_s} s")
                harness.start_operator(leader, configs[leader])
                next_kill = harness.now() + rng.uniform(2.0, 6.0)
            if done and len(faults) >= kills:
                break
            time.sleep(0.5)
        result = harness.finish(harness.now(), faults, {"problems": problems})
    finally:
        harness.close()
    return result


def run_restarts(
    *,
    components: tuple[str, ...] = ("kube-apiserver",),
    restarts: int = 3,
    jobs: int = 200,
    seed: int = 13,
    nodes: int = 16,
    seconds: tuple[int, int] = (5, 15),
    kill: bool = False,
    gap_seconds: tuple[float, float] = (5.0, 12.0),
    timeout_seconds: float = 900.0,
    report: Report = print,
) -> FaultResult:
    """One `leitstand run`; `restarts` times a component (kube-apiserver or etcd, taking `components` in
    turn) is stopped and started again (controlplane.restart: TERM + 5 s grace, or SIGKILL) while the
    burst runs. Per restart: how long the component was down, and how long after it answered again
    until a new pod was bound. An operator that exits meanwhile is started again (as its Deployment
    would) and listed."""
    for component in components:
        if component not in ("kube-apiserver", "etcd"):
            raise ValueError(f"component={component!r}: restart kube-apiserver or etcd")
    if not components:
        raise ValueError("components is empty: name kube-apiserver and/or etcd")
    harness = Harness("restart-" + "-".join("apiserver" if c == "kube-apiserver" else c for c in components),
                      nodes, report)
    faults: list[dict[str, Any]] = []
    try:
        configs = {"leitstand-0": harness.operator_config("leitstand-0")}
        operator = harness.start_operator("leitstand-0", configs["leitstand-0"])
        lead_or_raise(operator, 180)
        harness.start_sampler()
        harness.submit(burst(jobs, seed, seconds, campaign=harness.name))
        rng = random.Random(seed + 1)
        next_restart = harness.now() + rng.uniform(3.0, 8.0)
        while harness.now() < timeout_seconds:
            harness.watch_operators()
            done = harness.poll_phases()
            if len(faults) < restarts and harness.now() >= next_restart:
                component = components[len(faults) % len(components)]
                at = harness.now()
                report(f"{harness.name}: restarting {component} at {at:.1f} s")
                restarted = controlplane.restart(component, kill=kill)
                back = harness.now()
                harness.watch_operators()
                # Pods bound by then may be binds sent before the restart: count only later ones.
                before = _wait_for(functools.partial(_bound_now, harness.admin), 30) or set()
                bind_s = harness.first_new_bind(before, back, 120)
                faults.append({"at": round(at, 1), "component": component, "signal": "KILL" if kill else "TERM",
                               "down_seconds": round(restarted.down_seconds, 1), "first_bind_after_seconds": bind_s})
                report(f"{harness.name}: {component} down {restarted.down_seconds:.1f} s; first new pod bound "
                       f"{bind_s} s after it answered again")
                next_restart = harness.now() + rng.uniform(*gap_seconds)
            if done and len(faults) >= restarts:
                break
            time.sleep(0.5)
        result = harness.finish(harness.now(), faults, {})
    finally:
        harness.close()
    return result


def _bound_now(api: KubeApi) -> set[str] | None:
    try:
        return bound_pods(api.get("/api/v1/pods")["items"])
    except SAMPLE_ERRORS:
        api.close()
        return None


def _follower_ok(port: int, token: str) -> bool:
    return follower_answers(port, token) is None


def _holds(api: KubeApi, identity: str) -> bool:
    return lease_holder(api) == identity


def _wait_for(check: Callable[[], Any], timeout_seconds: float) -> Any:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    return None


def print_result(result: FaultResult, as_json: bool, report: Report) -> None:
    if as_json:
        report(json.dumps({**result.__dict__, "ok": result.ok}, indent=2))
        return
    report(
        f"{result.campaign}: {result.succeeded}/{result.jobs} jobs Succeeded in {result.seconds} s; "
        f"{len(result.failed)} Failed, {len(result.unfinished)} unfinished; "
        f"{result.samples} samples of all pods ({result.sample_errors} failed while the API was away): "
        f"{len(result.overbooked)} over-bookings, {len(result.duplicates)} replicas with two live pods; "
        f"longest partly-bound gang {result.max_partial_seconds} s; "
        f"operator exits: {len(result.operator_exits)}"
    )
    for fault in result.faults:
        report("  " + ", ".join(f"{k} {v}" for k, v in fault.items()))
    for line in [*result.overbooked[:10], *result.duplicates[:10], *result.operator_exits,
                 *result.extra.get("problems", [])]:
        report(f"  {line}")


NOT_READY_LABEL = "leitstand.dev/sim-not-ready"
"""Held NotReady by deploy/kwok/sim-node-not-ready.yaml while this label is "true"."""


def set_not_ready(api: KubeApi, node: str, not_ready: bool) -> None:
    """Label `node` so that KWOK holds it NotReady (or let it be Ready again)."""
    patch = {"metadata": {"labels": {NOT_READY_LABEL: "true" if not_ready else None}}}
    status, body = api.request("PATCH", f"/api/v1/nodes/{node}", patch, "application/merge-patch+json")
    if status != 200:
        raise ApiError(status, "PATCH", f"/api/v1/nodes/{node}", json.dumps(body))


def node_ready(api: KubeApi, node: str) -> bool | None:
    """The node's Ready condition (None if the node is gone)."""
    status, body = api.request("GET", f"/api/v1/nodes/{node}")
    if status == 404:
        return None
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (body.get("status") or {}).get("conditions") or ())


def jobs_on(pods: list[dict[str, Any]], nodes: set[str]) -> dict[str, set[str]]:
    """Jobs (namespace/name) with a live replica pod on one of `nodes` → those nodes."""
    found: dict[str, set[str]] = defaultdict(set)
    for pod in pods:
        meta, spec = pod["metadata"], pod["spec"]
        job = (meta.get("labels") or {}).get("leitstand.dev/job")
        if (job and spec.get("nodeName") in nodes and not meta.get("deletionTimestamp")
                and (pod.get("status") or {}).get("phase") not in TERMINAL):
            found[f"{meta['namespace']}/{job}"].add(spec["nodeName"])
    return dict(found)


def events_with_reason(api: KubeApi, reason: str) -> dict[str, str]:
    """TrainingJob (namespace/name) → message of its latest Event with `reason`."""
    found: dict[str, str] = {}
    for ns in ("tenant-a", "tenant-b"):
        items = api.get(f"/api/v1/namespaces/{ns}/events?fieldSelector=reason%3D{reason}")["items"]
        for event in sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or ""):
            involved = event.get("involvedObject") or {}
            if involved.get("kind") == "TrainingJob":
                found[f"{ns}/{involved.get('name')}"] = event.get("message", "")
    return found


def run_node_faults(
    *,
    jobs: int = 100,
    not_ready: int = 2,
    delete: int = 1,
    seed: int = 17,
    nodes: int = 16,
    grace_seconds: float = 5.0,
    seconds: tuple[int, int] = (20, 40),
    timeout_seconds: float = 900.0,
    report: Report = print,
) -> FaultResult:
    """One `leitstand run` (`node_lost_grace_seconds` = `grace_seconds`); once the burst runs, `not_ready`
    nodes that hold running gangs are made NotReady (held so by KWOK) and `delete` more are deleted.
    Judged on the API server: every job that had a pod there gets a `NodeLost` Event, none of its pods is
    left on those nodes, no pod is bound to them afterwards, and every job still ends Succeeded on the
    nodes that are left. The NotReady nodes are made Ready again at the end."""
    harness = Harness("nodes", nodes, report)
    faults: list[dict[str, Any]] = []
    problems: list[str] = []
    lost: list[str] = []
    try:
        config = harness.operator_config("leitstand-0", f"node_lost_grace_seconds: {grace_seconds}\n")
        operator = harness.start_operator("leitstand-0", config)
        lead_or_raise(operator, 180)
        harness.start_sampler()
        harness.submit(burst(jobs, seed, seconds, campaign="nodes"))
        affected: dict[str, set[str]] = {}
        placed_before: dict[str, str] = {}
        faulted_at = 0.0
        while harness.now() < timeout_seconds:
            harness.watch_operators()
            done = harness.poll_phases()
            spread = len(set(harness.samples[-1].live.values())) if harness.samples else 0
            if not lost and (spread >= 0.75 * len(harness.capacity) or harness.now() > 30.0):
                pods = harness.admin.get("/api/v1/pods")["items"]
                lost = _pick_nodes(pods, not_ready + delete, random.Random(seed))
                affected = jobs_on(pods, set(lost))
                placed_before = live_placements(pods)
                faulted_at = harness.now()
                for node in lost[:not_ready]:
                    set_not_ready(harness.admin, node, True)
                for node in lost[not_ready:]:
                    harness.admin.request("DELETE", f"/api/v1/nodes/{node}")
                held, gone = lost[:not_ready], lost[not_ready:]
                report(f"nodes: {', '.join(held) or 'none'} NotReady, {', '.join(gone) or 'none'} deleted "
                       f"at {faulted_at:.1f} s; {len(affected)} jobs had pods there")
                seen_not_ready = _wait_for(functools.partial(_all_not_ready, harness.admin, held), 30)
                faults.append({"at": round(faulted_at, 1), "not_ready": lost[:not_ready], "deleted": lost[not_ready:],
                               "jobs_with_pods_there": len(affected),
                               "not_ready_seen_after_seconds": round(harness.now() - faulted_at, 1)
                               if seen_not_ready else None})
            if done and lost:
                break
            time.sleep(0.5)
        seconds_total = harness.now()
        if lost:
            lost_set = set(lost)
            evicted = events_with_reason(harness.admin, "NodeLost")
            missing = sorted(set(affected) - set(evicted))
            if missing:
                problems.append(f"no NodeLost Event for {len(missing)} jobs that had pods on a lost node: "
                                f"{', '.join(missing[:10])}")
            before = {pod for pod, node in placed_before.items() if node in lost_set}
            onto_lost = sorted({pod for s in harness.samples if s.t > faulted_at
                                for pod, node in s.live.items() if node in lost_set and pod not in before})
            if onto_lost:
                problems.append(f"pods bound to a lost node after the fault: {', '.join(onto_lost[:10])}")
            cleared = next((s.t for s in harness.samples
                            if s.t > faulted_at and not any(n in lost_set for n in s.live.values())), None)
            if cleared is None:
                problems.append("live pods stayed on the lost nodes until the end")
            faults[0].update({"jobs_with_node_lost_event": len(set(affected) & set(evicted)),
                              "lost_nodes_empty_after_seconds": None if cleared is None
                              else round(cleared - faulted_at, 1),
                              "example_message": next(iter(evicted.values()), "")})
        for node in lost[:not_ready]:
            set_not_ready(harness.admin, node, False)
        result = harness.finish(seconds_total, faults, {"problems": problems})
    finally:
        harness.close()
    return result


def _all_not_ready(api: KubeApi, nodes: list[str]) -> bool:
    return all(node_ready(api, n) is False for n in nodes)


def _pick_nodes(pods: list[dict[str, Any]], count: int, rng: random.Random) -> list[str]:
    """`count` nodes that hold running replica pods, gangs spanning several nodes first."""
    by_job: dict[str, set[str]] = jobs_on(pods, {p["spec"].get("nodeName") for p in pods if p["spec"].get("nodeName")})
    spanning = sorted({n for nodes in by_job.values() if len(nodes) > 1 for n in nodes})
    busy = sorted({n for nodes in by_job.values() for n in nodes})
    rng.shuffle(spanning)
    rng.shuffle(busy)
    picked: list[str] = []
    for node in [*spanning, *busy]:
        if node not in picked:
            picked.append(node)
    if len(picked) < count:
        raise RuntimeError(f"only {len(picked)} nodes hold running pods; asked to fail {count}")
    return picked[:count]


# -- the CLI: `leitstand bench failover | restart | nodes` (registered in operator/commands.py) -------


def _durations(text: str) -> tuple[int, int]:
    try:
        low, high = (int(x) for x in text.split("-"))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: give the pods' run time range in seconds as LOW-HIGH, e.g. 10-30",
                                 param_hint="--durations") from None
    if not 1 <= low <= high:
        raise typer.BadParameter(f"{text!r}: need 1 <= LOW <= HIGH", param_hint="--durations")
    return low, high


JobsOption = Annotated[int, typer.Option(min=1, help="TrainingJobs in the burst.")]
NodesOption = Annotated[int, typer.Option(min=2, help="8-GPU nodes if a cluster must be started.")]
TimeoutOption = Annotated[float, typer.Option(help="Give up after this many seconds.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def _finish(result: FaultResult, as_json: bool) -> None:
    print_result(result, as_json, typer.echo)
    if not result.ok:
        raise typer.Exit(1)


def failover_command(
    jobs: JobsOption = 200,
    kills: Annotated[int, typer.Option(min=1, help="kill -9 of the leading replica this many times.")] = 5,
    seed: Annotated[int, typer.Option(help="Seeds the job mix and the kill moments.")] = 11,
    nodes: NodesOption = 16,
    durations: Annotated[str, typer.Option(help="Pods run LOW-HIGH seconds (long enough to outlast the kills).")]
    = "10-30",
    timeout: TimeoutOption = 900.0,
    as_json: JsonOption = False,
) -> None:
    """Two replicas of leitstand run; kill -9 of the leader during a burst: time until the other schedules,
    no GPU booked twice, no replica started twice, the follower's /readyz and reads."""
    _finish(run_failover(jobs=jobs, kills=kills, seed=seed, nodes=nodes, seconds=_durations(durations),
                         timeout_seconds=timeout, report=typer.echo), as_json)


def restart_command(
    component: Annotated[list[str], typer.Option(
        help="kube-apiserver or etcd; repeat to alternate (--component kube-apiserver --component etcd).")]
    = ["kube-apiserver"],  # noqa: B006 (typer reads the default; it is never mutated)
    restarts: Annotated[int, typer.Option(min=1, help="Restarts during the burst.")] = 3,
    kill: Annotated[bool, typer.Option("--kill", help="SIGKILL instead of TERM + 5 s grace.")] = False,
    jobs: JobsOption = 200,
    seed: Annotated[int, typer.Option(help="Seeds the job mix and the restart moments.")] = 13,
    nodes: NodesOption = 16,
    durations: Annotated[str, typer.Option(help="Pods run LOW-HIGH seconds.")] = "5-15",
    timeout: TimeoutOption = 900.0,
    as_json: JsonOption = False,
) -> None:
    """Restart kube-apiserver or etcd during a burst: scheduling resumes by itself, nothing is lost, no pod
    is duplicated, every job ends Succeeded."""
    for name in component:
        if name not in ("kube-apiserver", "etcd"):
            raise typer.BadParameter(f"{name!r}: restart kube-apiserver or etcd", param_hint="--component")
    _finish(run_restarts(components=tuple(component), restarts=restarts, kill=kill, jobs=jobs, seed=seed,
                         nodes=nodes, seconds=_durations(durations), timeout_seconds=timeout, report=typer.echo),
            as_json)


def nodes_command(
    not_ready: Annotated[int, typer.Option(min=0, help="Nodes made NotReady (and held so) while jobs run.")] = 2,
    delete: Annotated[int, typer.Option(min=0, help="Nodes deleted while jobs run.")] = 1,
    grace: Annotated[float, typer.Option(min=0, help="The operator's node_lost_grace_seconds.")] = 5.0,
    jobs: JobsOption = 100,
    seed: Annotated[int, typer.Option(help="Seeds the job mix and the nodes picked.")] = 17,
    nodes: NodesOption = 16,
    durations: Annotated[str, typer.Option(help="Pods run LOW-HIGH seconds.")] = "20-40",
    timeout: TimeoutOption = 900.0,
    as_json: JsonOption = False,
) -> None:
    """Nodes made NotReady or deleted while jobs run: their gangs are evicted whole and requeued with the
    reason NodeLost, and every job still ends Succeeded."""
    if not_ready + delete == 0:
        raise typer.BadParameter("nothing to fail: give --not-ready and/or --delete", param_hint="--not-ready")
    _finish(run_node_faults(jobs=jobs, not_ready=not_ready, delete=delete, seed=seed, nodes=nodes,
                            grace_seconds=grace, seconds=_durations(durations), timeout_seconds=timeout,
                            report=typer.echo), as_json)
