"""`leitstand demo`: the scheduling core driving a real (local) Kubernetes cluster, end to end.

The main job of the README's first command. It brings up the local cluster (etcd + kube-apiserver +
controller-manager + KWOK GPU nodes, `leitstand.operator.cluster`) unless one is running, submits a small
multi-tenant scenario as pods with `schedulerName: leitstand`, and runs scheduling cycles: observe
nodes and pods → build a `Snapshot` → `leitstand.scheduler.cycle.run_cycle` → write the plan back
(GPU indices as a pod annotation, then `pods/binding`; evicted gangs are deleted and re-submitted).
KWOK finishes each pod after its annotated duration, so jobs really run, end, and free their GPUs.

This is a single-process, poll-based driver meant to show and test the core against a real API server;
the production operator (kopf for the CRDs, informers, a Lease, an async binder) is built on the same
translation layer (`kube_model`). It prints every decision with its reason and a final summary.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leitstand.operator import kube_model as km
from leitstand.operator.cluster.kubeapi import ApiError, KubeApi
from leitstand.scheduler.cycle import run_cycle
from leitstand.scheduler.model import (
    GPU_MILLI,
    EvictionKind,
    JobId,
    Node,
    Plan,
    Queue,
    QueueName,
    SchedulerConfig,
    Snapshot,
)
from leitstand.scheduler.state import ClusterState

Report = Callable[[str], None]

QUEUES = (
    Queue(name=QueueName("tenant-a"), quota_milli=64 * GPU_MILLI, over_quota_weight=1.0),
    Queue(name=QueueName("tenant-b"), quota_milli=64 * GPU_MILLI, over_quota_weight=1.0),
)


@dataclass(frozen=True, slots=True)
class DemoJob:
    """One gang of the scenario: submitted at `submit_after` seconds into the run."""

    name: str
    namespace: str
    replicas: int
    gpus: int = 8
    fraction: float | None = None
    seconds: int = 40
    priority: int = 50
    required: str | None = None
    jurisdiction: str | None = None
    """The `leitstand.dev/jurisdiction` annotation: one jurisdiction or a comma-separated list."""
    submit_after: float = 0.0


SCENARIO = (
    # tenant-b borrows idle capacity beyond its 64-GPU quota with preemptible training gangs
    *(DemoJob(f"b-train-{i}", "tenant-b", replicas=2, seconds=45) for i in range(6)),
    DemoJob("b-notebooks", "tenant-b", replicas=4, gpus=1, fraction=0.5, seconds=30),
    # tenant-a: an in-quota gang that must sit in one rack; then one that needs reclaim
    DemoJob("a-pretrain", "tenant-a", replicas=2, seconds=20, required="rack"),
    DemoJob("a-finetune", "tenant-a", replicas=4, seconds=20, required="rack", submit_after=8),
    # data residency that no node offers: stays pending with a reason
    DemoJob("a-sovereign", "tenant-a", replicas=1, gpus=2, jurisdiction="eu-fr", submit_after=8),
)


def pod_manifests(job: DemoJob) -> list[dict[str, Any]]:
    annotations = {
        km.REPLICAS: str(job.replicas),
        km.PRIORITY: str(job.priority),
        "leitstand.dev/sim-duration": f"{job.seconds}s",
    }
    if job.fraction is not None:
        annotations[km.GPU_FRACTION] = str(job.fraction)
    if job.required:
        annotations[km.REQUIRED_TOPOLOGY] = job.required
    if job.jurisdiction:
        annotations[km.JURISDICTION] = job.jurisdiction
    limits = {"cpu": "8", "memory": "64Gi"}
    if job.fraction is None:
        limits["nvidia.com/gpu"] = str(job.gpus)
    return [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{job.name}-{i}",
                "namespace": job.namespace,
                "labels": {km.JOB_LABEL: job.name, km.QUEUE_LABEL: job.namespace},
                "annotations": annotations,
            },
            "spec": {
                "schedulerName": km.SCHEDULER_NAME,
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": "leitstand.dev/sim", "resources": {"limits": limits}}],
                "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
            },
        }
        for i in range(job.replicas)
    ]


@dataclass
class DemoLoop:
    api: KubeApi
    report: Report = print
    config: SchedulerConfig = field(default_factory=lambda: SchedulerConfig(min_runtime_seconds=5.0))
    started: dict[JobId, float] = field(default_factory=dict)
    created: dict[JobId, float] = field(default_factory=dict)
    said: dict[JobId, str] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def submit(self, job: DemoJob) -> None:
        for pod in pod_manifests(job):
            self.api.create(f"/api/v1/namespaces/{job.namespace}/pods", pod, exist_ok=False)
        self.created[JobId(f"{job.namespace}/{job.name}")] = self.now()
        self.report(f"[{self.now():5.1f}s] submit  {job.namespace}/{job.name}: {job.replicas} x "
                    f"{job.fraction if job.fraction else job.gpus} GPU")

    def observe(self) -> tuple[list[Node], dict[JobId, km.Gang]]:
        nodes = [km.node_from_json(n) for n in self.api.get("/api/v1/nodes")["items"]]
        pods = self.api.get(f"/api/v1/pods?fieldSelector=spec.schedulerName%3D{km.SCHEDULER_NAME}")["items"]
        groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
        for pod in pods:
            meta = pod["metadata"]
            if meta.get("deletionTimestamp") or km.JOB_LABEL not in meta.get("labels", {}):
                continue
            groups[(meta["namespace"], meta["labels"][km.JOB_LABEL])].append(pod)
        gangs = {}
        for (ns, name), members in groups.items():
            job_id = JobId(f"{ns}/{name}")
            gang = km.job_from_pods(members, created_at=self.created.get(job_id, 0.0))
            gangs[gang.job.id] = gang
        return nodes, gangs

    def cycle(self) -> Plan | None:
        nodes, gangs = self.observe()
        pending = tuple(g.job for g in gangs.values() if not any(p["spec"].get("nodeName") for p in g.pods))
        running = tuple(
            g.running(self.started.get(g.job.id, 0.0)) for g in gangs.values() if g.bound and not g.finished
        )
        if not pending:
            return None
        snapshot = Snapshot(
            nodes=tuple(nodes), queues=QUEUES, pending=pending, running=running, topology=km.TOPOLOGY,
            now=self.now(),
        )
        state = ClusterState.from_nodes(snapshot.nodes, snapshot.topology)
        for run in running:
            state.allocate_job(run)
        plan = run_cycle(snapshot, self.config, state=state)
        self.apply(plan, gangs)
        return plan

    def apply(self, plan: Plan, gangs: Mapping[JobId, km.Gang]) -> None:
        for eviction in plan.evictions:
            gang = gangs[eviction.job_id]
            self.say(eviction.job_id, f"evicted ({eviction.kind.value} for {eviction.for_job}): {eviction.reason}")
            self.events.append({"t": round(self.now(), 1), "evict": eviction.job_id, "kind": eviction.kind.value})
            for pod in gang.pods:
                meta = pod["metadata"]
                self.api.request("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}")
            if eviction.kind is not EvictionKind.CONSOLIDATE:
                self.resubmit(gang)
        for binding in plan.bindings:
            gang = gangs[binding.job_id]
            pods = [p for p in gang.pods if not p["spec"].get("nodeName")]
            for pod, placement in zip(pods, binding.placements, strict=False):
                meta = pod["metadata"]
                path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
                gpus = ",".join(str(g) for g in placement.gpu_indices)
                self.api.request(
                    "PATCH", path, {"metadata": {"annotations": {km.ASSIGNED_GPUS: gpus}}},
                    content_type="application/merge-patch+json",
                )
                body = {
                    "apiVersion": "v1", "kind": "Binding", "metadata": {"name": meta["name"]},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": placement.node},
                }
                status, reply = self.api.request("POST", f"{path}/binding", body)
                if status not in (200, 201):
                    raise ApiError(status, "POST", f"{path}/binding", json.dumps(reply))
            self.started[binding.job_id] = self.now()
            where = sorted({p.node for p in binding.placements})
            self.say(binding.job_id, f"bound after {self.now() - self.created.get(binding.job_id, 0):.1f}s "
                     f"to {', '.join(where)}")
            self.events.append({"t": round(self.now(), 1), "bind": binding.job_id, "nodes": where})
        for reason in plan.pending:
            self.say(reason.job_id, f"pending [{reason.code}] {reason.message}")

    def resubmit(self, gang: km.Gang) -> None:
        """An evicted gang starts over: the same pods, unbound, as a fresh submission."""
        for pod in gang.pods:
            meta = pod["metadata"]
            path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
            for _ in range(100):  # KWOK deletes promptly; wait until the name is free
                status, _body = self.api.request("GET", path)
                if status == 404:
                    break
                time.sleep(0.1)
            fresh: dict[str, Any] = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {k: meta[k] for k in ("name", "namespace", "labels", "annotations") if k in meta},
                "spec": {k: v for k, v in pod["spec"].items() if k != "nodeName"},
            }
            fresh["metadata"]["annotations"] = {
                k: v for k, v in fresh["metadata"].get("annotations", {}).items() if k != km.ASSIGNED_GPUS
            }
            self.api.create(f"/api/v1/namespaces/{meta['namespace']}/pods", fresh, exist_ok=False)

    def say(self, job: JobId, text: str) -> None:
        if self.said.get(job) != text:
            self.said[job] = text
            self.report(f"[{self.now():5.1f}s] {job:<24} {text}")


def api_for_run(run: Path) -> KubeApi:
    """An admin client for the cluster whose run folder is `run` (see `leitstand cluster env`)."""
    state = json.loads((run / "state.json").read_text())
    token = next(
        line.split(",")[0] for line in (run / "tokens.csv").read_text().splitlines() if ",admin," in line
    )
    return KubeApi(state["server"], token, str(run / "pki" / "ca.crt"))


def run_demo(api: KubeApi, report: Report = print, timeout_seconds: float = 300.0) -> dict[str, Any]:
    """Run the scenario to completion; returns a summary (also what the e2e test asserts on)."""
    loop = DemoLoop(api, report)
    queue = sorted(SCENARIO, key=lambda j: j.submit_after)
    while loop.now() < timeout_seconds:
        while queue and queue[0].submit_after <= loop.now():
            loop.submit(queue.pop(0))
        loop.cycle()
        _nodes, gangs = loop.observe()
        schedulable_left = [
            g for g in gangs.values() if not g.finished and not g.job.jurisdictions
        ]
        if not queue and not schedulable_left:
            break
        time.sleep(1.0)
    _nodes, gangs = loop.observe()
    summary: dict[str, Any] = {
        "seconds": round(loop.now(), 1),
        "finished": sorted(j for j, g in gangs.items() if g.finished),
        "unfinished": sorted(j for j, g in gangs.items() if not g.finished),
        "reasons": {j: loop.said.get(j, "") for j, g in gangs.items() if not g.finished},
        "events": loop.events,
    }
    report(f"demo: {len(summary['finished'])} jobs finished, {len(summary['unfinished'])} left "
           f"in {summary['seconds']} s")
    for job, reason in summary["reasons"].items():
        report(f"  still pending: {job}: {reason}")
    return summary


def cleanup(api: KubeApi) -> None:
    """Delete the demo's pods so the scenario can run again on the same cluster."""
    for namespace in {job.namespace for job in SCENARIO}:
        api.request("DELETE", f"/api/v1/namespaces/{namespace}/pods?labelSelector={km.JOB_LABEL}")
