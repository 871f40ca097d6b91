"""`leitstand run` end to end: each test is one scenario, driven the way people drive it and judged
only by what the API server shows.

The operator runs as a real child process (`launcher.start_operator`), authenticated as the
least-privileged `leitstand-operator` user (the ClusterRole of deploy/rbac/operator.yaml, not admin),
on `rack_cluster` (conftest): b200-0000..0003 with 8 GPUs each in two racks of two
(rack-000 = 0000+0001, rack-001 = 0002+0003), l40s-0000/0001 with 2 GPUs each in jurisdiction eu-fr,
and research-0000 (8 GPUs, pool `research`). Tenants submit TrainingJobs and pods with their own
kubeconfig (`edit` in their namespace only); the platform engineer (admin) installs deploy/, writes
queues and priority classes, binds foreign pods and deletes nodes.

The queues of every scenario (each test adds what it needs and the clean-up removes it):

    tenant-a   quota 16                       namespaces [tenant-a]
    tenant-b   quota 16                       namespaces [tenant-b]
    research   quota 8, nodePool research     namespaces [research]   (research-0000 is reserved)

so 36 GPUs are shared (32 B200, 4 L40S). Outcomes are read from the API server only: TrainingJob
status, conditions and Events (as the tenant), pods' `spec.nodeName` and `leitstand.dev/gpus`.
Two watches (`Observed`) follow every pod and every TrainingJob for the whole module: every state
the pods pass through is checked for a GPU booked twice (not only sampled moments), and every status
a job passes through is kept, so short-lived states (Reclaimed, NodeLost, Restarting) can be
asserted without racing the operator.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import http.client
import json
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
import yaml

from leitstand.operator.cluster.layout import repo_root
from leitstand.operator.service.launcher import OperatorProcess, start_operator

from .conftest import PHASE_REPORTS, Cluster

DEPLOY = repo_root() / "deploy"
INSTALL = [DEPLOY / "namespace.yaml", DEPLOY / "crds", DEPLOY / "priorityclasses.yaml", DEPLOY / "rbac"]
SYSTEM_NAMESPACE = "leitstand-system"
TENANTS = ("tenant-a", "tenant-b", "research", "industry")
"""Namespaces the scenarios submit in; each has a user of the same name with `edit` there."""
E2E_LABEL = "leitstand.dev/e2e"
"""On queues and priority classes a scenario creates, so the clean-up finds them."""

GPUS = "leitstand.dev/gpus"
FRACTION = "leitstand.dev/gpu-fraction"
ROLE = "leitstand.dev/role"
JOB = "leitstand.dev/job"

OPERATOR_CONFIG = {
    # Scenarios preempt jobs seconds after they start and lose nodes for seconds, not minutes.
    "scheduler": {"min_runtime_seconds": 1},
    "node_lost_grace_seconds": 2,
    "bind_retry_seconds": 1,
    "cycle_max_interval_seconds": 1,
}

T = TypeVar("T")


# -- objects as people write them --------------------------------------------------------------------


def queue(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "leitstand.dev/v1alpha1", "kind": "Queue",
            "metadata": {"name": name, "labels": {E2E_LABEL: "operator"}}, "spec": spec}


BASE_QUEUES = [
    queue("tenant-a", gpu={"quota": 16}, namespaces=["tenant-a"]),
    queue("tenant-b", gpu={"quota": 16}, namespaces=["tenant-b"]),
    queue("research", nodePool="research", gpu={"quota": 8}, namespaces=["research"]),
]
BASE_QUEUE_NAMES = {q["metadata"]["name"] for q in BASE_QUEUES}


def training_job(
    name: str,
    namespace: str = "tenant-a",
    *,
    replicas: int = 1,
    gpus: int | None = 1,
    runs_for: str | None = None,
    fails: bool = False,
    node: str | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A TrainingJob charged to the queue named like its namespace. `runs_for`: the simulated pods
    finish after that long ("5s"; unset: they run until deleted); `fails`: they end Failed; `node`: a
    nodeSelector on that hostname; other keyword arguments are spec fields as in YAML (camelCase)."""
    annotations = {}
    if runs_for is not None:
        annotations["leitstand.dev/sim-duration"] = runs_for
    if fails:
        annotations["leitstand.dev/sim-fail"] = "true"
    pod_spec: dict[str, Any] = {"containers": [{"name": "trainer", "image": "registry.example/leitstand/train:1"}]}
    if node is not None:
        pod_spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    body: dict[str, Any] = {"queue": namespace, "replicas": replicas}
    if gpus is not None and "gpuFraction" not in spec:
        body["gpus"] = gpus
    body.update(spec)
    body["template"] = {"metadata": {"annotations": annotations}, "spec": pod_spec}
    return {"apiVersion": "leitstand.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}


def pod_gpus(pod: dict[str, Any]) -> int:
    """Whole GPUs (nvidia.com/gpu) the pod's containers ask for."""
    total = 0
    for container in pod["spec"].get("containers") or ():
        resources = container.get("resources") or {}
        value = (resources.get("requests") or {}).get("nvidia.com/gpu", (resources.get("limits") or {}).get(
            "nvidia.com/gpu", 0))
        total += int(value)
    return total


def assigned(pod: dict[str, Any]) -> list[int]:
    text = (pod["metadata"].get("annotations") or {}).get(GPUS, "")
    return [int(g) for g in text.split(",") if g.strip()]


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or () if c["type"] == kind), {})


def holds_gpus(pod: dict[str, Any]) -> bool:
    """Bound and not finished (a terminating pod still holds its node until it is gone)."""
    return bool(pod["spec"].get("nodeName")) and pod.get("status", {}).get("phase") not in ("Succeeded", "Failed")


# -- watching the API server ------------------------------------------------------------------------


class ApiWatch:
    """One collection of the API server followed by list + watch in a daemon thread; every object
    change goes to `on_event(type, object)`, every re-list to `on_reset(objects)`."""

    def __init__(self, kubeconfig: Path, path: str, on_event: Callable[[str, dict[str, Any]], None],
                 on_reset: Callable[[list[dict[str, Any]]], None]) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        self.server = urlsplit(cluster["server"])
        self.token = config["users"][0]["user"]["token"]
        self.context = ssl.create_default_context(
            cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
        )
        self.path = path
        self.on_event = on_event
        self.on_reset = on_reset
        self.synced = threading.Event()
        self.stopping = threading.Event()
        self.errors: list[str] = []
        self._conn: http.client.HTTPSConnection | None = None
        self.thread = threading.Thread(target=self._run, name=f"watch {path}", daemon=True)

    def start(self) -> None:
        self.thread.start()
        if not self.synced.wait(30):
            raise AssertionError(f"could not list {self.path}: {self.errors}")

    def stop(self) -> None:
        self.stopping.set()
        conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(10)

    def _get(self, query: str) -> http.client.HTTPResponse:
        conn = http.client.HTTPSConnection(self.server.hostname or "127.0.0.1", self.server.port,
                                           context=self.context, timeout=120)
        self._conn = conn
        conn.request("GET", f"{self.path}?{query}", headers={"Authorization": f"Bearer {self.token}"})
        return conn.getresponse()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                reply = self._get("limit=0")
                listing = json.loads(reply.read())
                self._conn.close() if self._conn else None
                version = listing["metadata"]["resourceVersion"]
                self.on_reset(listing.get("items") or [])
                self.synced.set()
                reply = self._get(f"watch=1&allowWatchBookmarks=true&timeoutSeconds=60&resourceVersion={version}")
                while not self.stopping.is_set():
                    line = reply.readline()
                    if not line:
                        break  # the server ended the watch (timeoutSeconds): list again
                    event = json.loads(line)
                    if event["type"] == "ERROR":
                        break  # e.g. 410 Gone: list again
                    if event["type"] != "BOOKMARK":
                        self.on_event(event["type"], event["object"])
            except Exception as exc:  # a dropped connection: list and watch again (or stop)
                if self.stopping.is_set():
                    return
                self.errors.append(repr(exc))
                self.stopping.wait(0.5)
            finally:
                if self._conn is not None:
                    self._conn.close()


class Observed:
    """What the API server has shown since the module started: current pods and TrainingJobs, every
    status each job went through, every pod binding, and every moment a GPU was booked twice."""

    def __init__(self, cluster: Cluster) -> None:
        self.changed = threading.Condition()
        self.pods: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.statuses: dict[str, list[dict[str, Any]]] = {}
        """Job key ("ns/name") → every distinct status it had, oldest first."""
        self.bindings: list[tuple[str, str, str]] = []
        """(pod key, job name or "", node) each time a pod was seen bound for the first time."""
        self.overbooked: list[str] = []
        nodes = cluster.get_json("nodes")["items"]
        self.capacity = {n["metadata"]["name"]: int(n["status"]["allocatable"].get("nvidia.com/gpu", 0))
                         for n in nodes}
        self.labels = {n["metadata"]["name"]: n["metadata"]["labels"] for n in nodes}
        admin = cluster.kubeconfig("admin")
        self.watches = [
            ApiWatch(admin, "/api/v1/pods", self._on_pod, self._reset_pods),
            ApiWatch(admin, "/apis/leitstand.dev/v1alpha1/trainingjobs", self._on_job, self._reset_jobs),
        ]

    def start(self) -> None:
        for watch in self.watches:
            watch.start()

    def forget_history(self) -> None:
        """A new scenario: job names may be reused, so earlier statuses and bindings no longer count."""
        with self.changed:
            self.statuses = {key: [copy.deepcopy(job.get("status") or {})] for key, job in self.jobs.items()}
            self.bindings.clear()
            self.overbooked.clear()

    def stop(self) -> None:
        for watch in self.watches:
            watch.stop()

    # -- watch callbacks (watch threads) --

    @staticmethod
    def _key(obj: dict[str, Any]) -> str:
        return f"{obj['metadata'].get('namespace')}/{obj['metadata']['name']}"

    def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        with self.changed:
            key = self._key(pod)
            old = self.pods.pop(key, None)
            if kind != "DELETED":
                self.pods[key] = pod
                if pod["spec"].get("nodeName") and not (old or {}).get("spec", {}).get("nodeName"):
                    self.bindings.append((key, pod["metadata"].get("labels", {}).get(JOB, ""),
                                          pod["spec"]["nodeName"]))
            for node in {p["spec"].get("nodeName") for p in (old, pod) if p is not None} - {None, ""}:
                self._check_node(str(node))
            self.changed.notify_all()

    def _reset_pods(self, pods: list[dict[str, Any]]) -> None:
        with self.changed:
            self.pods = {self._key(p): p for p in pods}
            for node in {p["spec"].get("nodeName") for p in pods} - {None, ""}:
                self._check_node(str(node))
            self.changed.notify_all()

    def _on_job(self, kind: str, job: dict[str, Any]) -> None:
        with self.changed:
            key = self._key(job)
            if kind == "DELETED":
                self.jobs.pop(key, None)
            else:
                self.jobs[key] = job
                self._remember(key, job)
            self.changed.notify_all()

    def _reset_jobs(self, jobs: list[dict[str, Any]]) -> None:
        with self.changed:
            self.jobs = {self._key(j): j for j in jobs}
            for key, job in self.jobs.items():
                self._remember(key, job)
            self.changed.notify_all()

    def _remember(self, key: str, job: dict[str, Any]) -> None:
        history = self.statuses.setdefault(key, [])
        status = job.get("status") or {}
        if not history or history[-1] != status:
            history.append(copy.deepcopy(status))

    def _check_node(self, node: str) -> None:
        """Every GPU of `node` holds at most 1000 milli, and the pods without GPU indices (bound by
        others) fit in the GPUs the indexed pods leave."""
        milli: Counter[int] = Counter()
        unindexed = 0
        names = []
        for key, pod in self.pods.items():
            if pod["spec"].get("nodeName") != node or not holds_gpus(pod):
                continue
            if pod["metadata"].get("labels", {}).get(ROLE) == "gpu-reservation":
                continue  # holds a shared GPU for other schedulers; the fraction pods on it count
            indices = assigned(pod)
            fraction = (pod["metadata"].get("annotations") or {}).get(FRACTION)
            share = round(float(fraction) * 1000) if fraction else 1000
            if indices:
                for gpu in indices:
                    milli[gpu] += share
            else:
                unindexed += pod_gpus(pod)
            if indices or pod_gpus(pod):
                names.append(f"{key}{indices or ''}")
        capacity = self.capacity.get(node, 0)
        wrong = [g for g, m in milli.items() if m > 1000 or g >= capacity]
        if wrong or len(milli) + unindexed > capacity:
            self.overbooked.append(
                f"{node}: GPUs {sorted(milli.items())} + {unindexed} unindexed of {capacity}; pods {names}"
            )

    # -- what tests read (any thread) --

    def wait(self, check: Callable[[], T | None], what: str, timeout_seconds: float = 30.0) -> T:
        """`check()`'s first truthy value, evaluated after every change the watches see."""
        deadline = time.monotonic() + timeout_seconds
        with self.changed:
            while True:
                value = check()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out after {timeout_seconds:g} s waiting for {what}")
                self.changed.wait(min(remaining, 0.5))

    def holds(self, check: Callable[[], bool], what: str, seconds: float) -> None:
        """`check()` stays true for `seconds` (for what must NOT happen: no pod bound, no admission)."""
        deadline = time.monotonic() + seconds
        with self.changed:
            while time.monotonic() < deadline:
                assert check(), f"{what} stopped being true"
                self.changed.wait(max(0.0, min(deadline - time.monotonic(), 0.5)))
            assert check(), f"{what} stopped being true"

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        with self.changed:
            job = self.jobs.get(f"{namespace}/{name}")
            return copy.deepcopy((job or {}).get("status") or {})

    def history(self, namespace: str, name: str) -> list[dict[str, Any]]:
        with self.changed:
            return copy.deepcopy(self.statuses.get(f"{namespace}/{name}", []))

    def job_pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        with self.changed:
            return [copy.deepcopy(p) for k, p in sorted(self.pods.items())
                    if k.startswith(f"{namespace}/") and p["metadata"].get("labels", {}).get(JOB) == name]

    def pods_in(self, *namespaces: str) -> list[dict[str, Any]]:
        with self.changed:
            return [copy.deepcopy(p) for k, p in sorted(self.pods.items()) if k.split("/")[0] in namespaces]

    def ever_bound(self, namespace: str, job: str) -> list[str]:
        """Nodes any pod of the job was ever bound to."""
        with self.changed:
            return [node for key, name, node in self.bindings if name == job and key.startswith(f"{namespace}/")]


# -- the installed operator ---------------------------------------------------------------------------


class Leitstand:
    """The cluster with deploy/ installed, the base queues, `leitstand run` and the watches."""

    def __init__(self, cluster: Cluster, operator: OperatorProcess, seen: Observed) -> None:
        self.cluster = cluster
        self.operator = operator
        self.seen = seen

    def kubectl(self, *args: str, user: str = "admin", stdin: str | None = None) -> str:
        return self.cluster.kubectl(*args, user=user, stdin=stdin).stdout

    def submit(self, *objects: dict[str, Any], user: str | None = None) -> None:
        """`kubectl apply` as the tenant owning the objects' namespace (or as `user`)."""
        [namespace] = {o["metadata"].get("namespace") for o in objects}
        body = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
        self.kubectl("apply", "-f", "-", user=user or str(namespace), stdin=json.dumps(body))

    def wait_status(self, namespace: str, name: str, timeout_seconds: float = 30.0, **expected: Any) -> dict[str, Any]:
        """The job's status once each expected field has its value (`phase="Running"`)."""

        def matches() -> dict[str, Any] | None:
            status = self.seen.status(namespace, name)
            return status if all(status.get(k) == v for k, v in expected.items()) else None

        try:
            return self.seen.wait(matches, f"{namespace}/{name} with {expected}", timeout_seconds)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its status: {json.dumps(self.seen.status(namespace, name))}") from None

    def passed_through(self, namespace: str, name: str, **expected: Any) -> dict[str, Any]:
        """The first status the job had with each expected field at its value (watch history)."""
        for status in self.seen.history(namespace, name):
            if all(status.get(k) == v for k, v in expected.items()):
                return status
        raise AssertionError(f"{namespace}/{name} never had {expected}; it went through "
                             f"{[(s.get('phase'), s.get('reason')) for s in self.seen.history(namespace, name)]}")

    def events(self, namespace: str, name: str, reason: str, timeout_seconds: float = 15.0) -> list[dict[str, Any]]:
        """The TrainingJob's Events with `reason`, read by the tenant (waits for the first)."""
        selector = f"involvedObject.kind=TrainingJob,involvedObject.name={name},reason={reason}"
        return poll(
            lambda: list(self.cluster.get_json("events", "-n", namespace, "--field-selector", selector,
                                               user=namespace)["items"]),
            f"an Event {reason} on {namespace}/{name}", timeout_seconds,
        )

    def queue_status(self, name: str, timeout_seconds: float = 15.0, user: str = "admin",
                     **expected: Any) -> dict[str, Any]:
        """The Queue's status once each expected field has its value, read with kubectl as `user`."""
        last: dict[str, Any] = {}

        def matches() -> dict[str, Any] | None:
            nonlocal last
            last = self.cluster.get_json("queue", name, user=user).get("status") or {}
            return last if all(last.get(k) == v for k, v in expected.items()) else None

        try:
            return poll(matches, f"queue {name} with {expected}", timeout_seconds)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its status: {json.dumps(last)}") from None

    def job(self, namespace: str, name: str) -> dict[str, Any]:
        """The TrainingJob as its tenant reads it with kubectl."""
        return dict(self.cluster.get_json("trainingjob", name, "-n", namespace, user=namespace))

    def node_of(self, pods: list[dict[str, Any]]) -> list[str]:
        return sorted(p["spec"]["nodeName"] for p in pods)

    def clean_up(self) -> None:
        """Delete what a scenario made, the way an admin would, and wait until every pod is gone."""
        self.kubectl("delete", "trainingjobs", "--all", "--all-namespaces", "--wait=false")
        for namespace in sorted({p["metadata"]["namespace"] for p in self.seen.pods_in(*TENANTS)}):
            self.kubectl("delete", "pods", "-n", namespace, "-l", f"!{JOB}", "--wait=false")
        extra = [n for n in self._labelled("queues") if n not in BASE_QUEUE_NAMES]
        if extra:
            self.kubectl("delete", "queues", *extra, "--wait=false")
        classes = self._labelled("priorityclasses")
        if classes:
            self.kubectl("delete", "priorityclasses", *classes)
        try:
            self.seen.wait(lambda: not self.seen.pods_in(*TENANTS, SYSTEM_NAMESPACE),
                           "every pod of the scenario (and every GPU reservation) to be gone", 30)
        except AssertionError:
            left = [f"{p['metadata']['namespace']}/{p['metadata']['name']} on {p['spec'].get('nodeName')}"
                    for p in self.seen.pods_in(*TENANTS, SYSTEM_NAMESPACE)]
            for namespace in (*TENANTS, SYSTEM_NAMESPACE):
                self.kubectl("delete", "pods", "--all", "-n", namespace, "--grace-period=0", "--force")
            raise AssertionError(f"pods left behind after the scenario (force-deleted now): {left}") from None

    def _labelled(self, kind: str) -> list[str]:
        items = self.cluster.get_json(kind, "-l", E2E_LABEL)["items"]
        return [i["metadata"]["name"] for i in items]


@pytest.fixture(scope="module")
def leitstand(rack_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Leitstand]:
    """deploy/ installed as a platform engineer would, the base queues, and `leitstand run` as the
    `leitstand-operator` user; stopped by PID at the end (an error with its log if it did not run to
    the end or did not exit cleanly on SIGTERM)."""
    cluster = rack_cluster
    cluster.kubectl("apply", *[arg for path in INSTALL for arg in ("-f", str(path))])
    cluster.kubectl("wait", "--for=condition=Established", "crd/trainingjobs.leitstand.dev",
                    "crd/queues.leitstand.dev", "--timeout=60s")
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": BASE_QUEUES}))
    seen = Observed(cluster)
    seen.start()
    folder = tmp_path_factory.mktemp("operator")
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(OPERATOR_CONFIG))
    operator = start_operator(cluster.kubeconfig("leitstand-operator"), folder / "leitstand-run.log",
                              identity="e2e-operator", config=config)
    try:
        if not operator.wait_for_log("leading as", timeout_seconds=120):
            raise AssertionError(f"leitstand run did not start leading:\n{operator.log_text()[-5000:]}")
        yield Leitstand(cluster, operator, seen)
    finally:
        was_alive = operator.alive()
        code = operator.stop()
        seen.stop()
        if not was_alive or code != 0:
            raise AssertionError(f"leitstand run ended with exit code {code} (alive until the end: {was_alive}); "
                                 f"its log:\n{operator.log_text()[-20000:]}")


@pytest.fixture(autouse=True)
def scenario(leitstand: Leitstand, request: pytest.FixtureRequest) -> Iterator[Leitstand]:
    """Each scenario starts on an empty cluster and leaves one: its jobs, pods, queues and classes are
    deleted and every pod is awaited gone. Fails if any GPU was booked twice while it ran; prints the
    operator's log of the scenario when it failed."""
    assert leitstand.operator.alive(), f"leitstand run is not running:\n{leitstand.operator.log_text()[-5000:]}"
    log_start = len(leitstand.operator.log_text())
    leitstand.seen.forget_history()
    yield leitstand
    problem = ""
    try:
        leitstand.clean_up()
    except AssertionError as exc:
        problem = str(exc)
    reports = request.node.stash.get(PHASE_REPORTS, {})
    if problem or leitstand.seen.overbooked or any(r.failed for r in reports.values()):
        print(f"---- leitstand run log during {request.node.name} ----")
        print(leitstand.operator.log_text()[log_start:][-30000:])
    assert not leitstand.seen.overbooked, f"GPUs booked twice: {leitstand.seen.overbooked[:5]}"
    assert not problem, problem


# -- the scenarios ------------------------------------------------------------------------------------


def test_a_tenant_borrows_idle_gpus_and_gives_them_back_whole_when_the_owner_returns(leitstand: Leitstand) -> None:
    ls = leitstand
    # tenant-b (quota 16) fills all 32 B200 GPUs with two preemptible 2 x 8 gangs: 16 are borrowed.
    fills = ["b-fill-1", "b-fill-2"]
    ls.submit(*(training_job(name, "tenant-b", replicas=2, gpus=8) for name in fills))
    for name in fills:
        ls.wait_status("tenant-b", name, phase="Running")

    # tenant-a (quota 16, nothing running) asks for its quota: one 2 x 8 gang.
    ls.submit(training_job("a-train", "tenant-a", replicas=2, gpus=8))
    running = ls.wait_status("tenant-a", "a-train", phase="Running", timeout_seconds=60)
    assert running["preemptions"] == 0 and condition(running, "Admitted")["status"] == "True"
    assert running["gpus"] == "16"
    assert len(ls.seen.job_pods("tenant-a", "a-train")) == 2

    # Exactly one tenant-b gang was evicted, whole: none of its pods is left; the other runs on.
    victims = [n for n in fills if ls.seen.history("tenant-b", n)[-1].get("phase") == "Pending"]
    assert len(victims) == 1, [(n, ls.seen.status("tenant-b", n).get("phase")) for n in fills]
    [victim] = victims
    [survivor] = [n for n in fills if n != victim]
    assert ls.seen.job_pods("tenant-b", victim) == []
    assert ls.seen.status("tenant-b", survivor)["phase"] == "Running"
    assert ls.seen.status("tenant-b", survivor)["preemptions"] == 0

    # What tenant-b reads: Pending, reason Reclaimed (while it waits for GPUs again), condition
    # Preempted, one preemption, an Event naming the job it made room for.
    evicted = ls.passed_through("tenant-b", victim, phase="Pending", reason="Reclaimed")
    assert evicted["preemptions"] == 1
    assert "tenant-a/a-train" in evicted["message"], evicted["message"]
    ls.wait_status("tenant-b", victim, phase="Pending", reason="Reclaimed")
    ls.seen.wait(lambda: condition(ls.seen.status("tenant-b", victim), "Admitted").get("reason") == "Insufficient",
                 f"{victim} to say why it cannot come back yet")
    status = ls.job("tenant-b", victim)["status"]
    assert status["phase"] == "Pending" and status["reason"] == "Reclaimed" and status["preemptions"] == 1
    assert "reclaimed for job tenant-a/a-train" in status["message"] and "waiting: " in status["message"]
    assert condition(status, "Preempted")["status"] == "True"
    assert condition(status, "Preempted")["reason"] == "Reclaimed"
    assert condition(status, "Admitted")["status"] == "False"
    [event] = ls.events("tenant-b", victim, "Reclaimed")
    assert event["type"] == "Warning" and "tenant-a/a-train" in event["message"]
    # The queues as every tenant can read them: tenant-b holds its quota, one job waits.
    queue_b = ls.queue_status("tenant-b", user="tenant-a", allocated="16", runningJobs=1, pendingJobs=1,
                              pendingGPUs="16")
    assert float(queue_b["fairShare"]) >= 16, queue_b
    ls.queue_status("tenant-a", user="tenant-b", allocated="16", allocatedMilli=16000, runningJobs=1)
    # At no moment the API server showed was a GPU booked twice (checked on every pod change).
    assert ls.seen.overbooked == []

    # tenant-a is done: the evicted gang runs again, no longer marked Preempted, still counted once.
    ls.kubectl("delete", "trainingjob", "a-train", "-n", "tenant-a", user="tenant-a")
    status = ls.wait_status("tenant-b", victim, phase="Running")
    assert status["preemptions"] == 1
    assert condition(status, "Preempted")["status"] == "False"


def test_an_elastic_job_gives_back_replicas_instead_of_its_whole_gang_and_grows_again(leitstand: Leitstand) -> None:
    ls = leitstand
    # tenant-b runs an elastic job (minReplicas 1) of up to 4 x 8 GPUs: the cluster is idle, all 4 start.
    ls.submit(training_job("b-elastic", "tenant-b", replicas=4, gpus=8, minReplicas=1))
    status = ls.wait_status("tenant-b", "b-elastic", phase="Running", replicas=4, timeout_seconds=60)
    assert status["message"] == "4 of 4 replicas running (elastic, at least 1)"

    # tenant-a asks for its quota: reclaim takes two replicas from the elastic job, which runs on with two.
    ls.submit(training_job("a-train", "tenant-a", replicas=2, gpus=8))
    ls.wait_status("tenant-a", "a-train", phase="Running", timeout_seconds=60)
    status = ls.wait_status("tenant-b", "b-elastic", phase="Running", replicas=2)
    assert status["preemptions"] == 0  # shrunk, never evicted nor requeued
    assert all(s.get("phase") != "Pending" for s in ls.seen.history("tenant-b", "b-elastic")[1:]
               if s.get("replicas")), "the elastic job went back to Pending"
    [event] = ls.events("tenant-b", "b-elastic", "Shrunk")
    assert event["type"] == "Warning" and "tenant-a/a-train" in event["message"], event["message"]
    assert len(ls.seen.job_pods("tenant-b", "b-elastic")) == 2
    ls.queue_status("tenant-b", user="tenant-a", allocated="16", runningJobs=1)

    # tenant-a is done: the elastic job grows back onto the freed GPUs.
    ls.kubectl("delete", "trainingjob", "a-train", "-n", "tenant-a", user="tenant-a")
    status = ls.wait_status("tenant-b", "b-elastic", phase="Running", replicas=4, timeout_seconds=60)
    assert ls.events("tenant-b", "b-elastic", "Grown")
    assert ls.seen.overbooked == []


def test_a_gang_that_cannot_fit_waits_whole_with_a_reason_and_one_that_never_fits_says_so(
    leitstand: Leitstand,
) -> None:
    ls = leitstand
    ls.submit(training_job("b-hold", "tenant-b", replicas=2, gpus=8))
    ls.wait_status("tenant-b", "b-hold", phase="Running")

    # 3 x 8 GPUs while 16 B200 GPUs are free (and tenant-b stays within its quota: nothing to reclaim).
    ls.submit(training_job("a-big", "tenant-a", replicas=3, gpus=8))
    waiting = ls.seen.wait(lambda: ls.seen.status("tenant-a", "a-big").get("reason"), "a-big's pending reason")
    status = ls.seen.status("tenant-a", "a-big")
    assert status["phase"] == "Pending", status
    assert waiting == "Insufficient", status
    assert "2 of 3 replicas" in status["message"], status["message"]
    assert condition(status, "Admitted") | {"lastTransitionTime": None} == {
        "type": "Admitted", "status": "False", "reason": "Insufficient", "message": status["message"],
        "lastTransitionTime": None,
    }
    ls.events("tenant-a", "a-big", "Insufficient")
    ls.seen.holds(lambda: not ls.seen.job_pods("tenant-a", "a-big"), "a-big has no pod", seconds=3)
    assert ls.seen.ever_bound("tenant-a", "a-big") == []  # not one replica, at any moment

    # 5 x 8 GPUs: not even an empty cluster holds it (research-0000 is reserved for another queue).
    ls.submit(training_job("a-huge", "tenant-a", replicas=5, gpus=8))
    never = ls.wait_status("tenant-a", "a-huge", reason="NeverFits")
    assert never["phase"] == "Pending"
    assert "needs 40 GPUs" in never["message"] and "have 36 GPUs" in never["message"], never["message"]
    assert "room for 4 of 5 replicas" in never["message"], never["message"]

    # Once tenant-b's gang ends, the 3 x 8 gang starts whole.
    ls.kubectl("delete", "trainingjob", "b-hold", "-n", "tenant-b", user="tenant-b")
    ls.wait_status("tenant-a", "a-big", phase="Running")
    assert len(ls.seen.job_pods("tenant-a", "a-big")) == 3
    assert ls.seen.status("tenant-a", "a-huge")["reason"] == "NeverFits"


def test_a_required_rack_is_honoured_even_when_the_gang_would_fit_across_racks(leitstand: Leitstand) -> None:
    ls = leitstand
    # Half of b200-0000 (rack-000) and half of b200-0003 (rack-001) are taken: each rack has one
    # node with 8 free GPUs and one with 4.
    ls.submit(training_job("b-hold-0", "tenant-b", gpus=4, node="b200-0000"),
              training_job("b-hold-3", "tenant-b", gpus=4, node="b200-0003"))
    for name in ("b-hold-0", "b-hold-3"):
        ls.wait_status("tenant-b", name, phase="Running")

    # 2 x 6 GPUs in one rack: b200-0001 + b200-0002 would hold it, but they are in different racks.
    ls.submit(training_job("a-rack", "tenant-a", replicas=2, gpus=6, topology={"required": "rack"}))
    status = ls.wait_status("tenant-a", "a-rack", reason="NoTopologyDomain")
    assert status["phase"] == "Pending"
    assert status["message"].startswith("no rack has 12 free GPUs"), status["message"]
    ls.seen.holds(lambda: not ls.seen.job_pods("tenant-a", "a-rack"), "a-rack has no pod", seconds=2)

    # rack-001 frees up: the gang runs there, every replica in the same rack.
    ls.kubectl("delete", "trainingjob", "b-hold-3", "-n", "tenant-b", user="tenant-b")
    status = ls.wait_status("tenant-a", "a-rack", phase="Running")
    nodes = ls.node_of(ls.seen.job_pods("tenant-a", "a-rack"))
    assert nodes == ["b200-0002", "b200-0003"]
    assert {ls.seen.labels[n]["leitstand.dev/rack"] for n in nodes} == {"rack-001"}
    assert status["placement"] == {"nodes": nodes, "nodeCount": 2, "level": "rack", "domain": "rack-001"}


def test_fractions_share_gpus_without_overcommit_and_reserve_them_while_they_run(leitstand: Leitstand) -> None:
    ls = leitstand
    halves = [f"a-half-{i}" for i in range(4)]
    ls.submit(*(training_job(n, gpus=None, gpuFraction=0.5, runs_for="8s") for n in halves))
    for name in halves:
        assert ls.wait_status("tenant-a", name, phase="Running")["gpus"] == "0.5"

    pods = [p for n in halves for p in ls.seen.job_pods("tenant-a", n)]
    milli: Counter[tuple[str, int]] = Counter()
    for pod in pods:
        [gpu] = assigned(pod)
        assert pod["metadata"]["annotations"][FRACTION] == "0.5"
        assert pod_gpus(pod) == 0  # a slice asks for no whole nvidia.com/gpu
        milli[(pod["spec"]["nodeName"], gpu)] += 500
    assert all(m <= 1000 for m in milli.values()), milli
    shared = set(milli)

    # One reservation pod per shared GPU, requesting one whole nvidia.com/gpu on that node, so other
    # schedulers see the GPU taken.
    def reserved() -> set[tuple[str, int]]:
        return {(p["spec"].get("nodeName", ""), assigned(p)[0]) for p in ls.seen.pods_in(SYSTEM_NAMESPACE)
                if holds_gpus(p) and pod_gpus(p) == 1 and p["metadata"]["labels"].get(ROLE) == "gpu-reservation"}

    ls.seen.wait(lambda: reserved() == shared, f"one gpu-reservation pod on each of {sorted(shared)}", 15)

    # When the slices finish, the reservations go too.
    for name in halves:
        ls.wait_status("tenant-a", name, phase="Succeeded")
    ls.seen.wait(lambda: not ls.seen.pods_in(SYSTEM_NAMESPACE), "the gpu-reservation pods to be removed", 20)


def test_a_reserved_pool_serves_only_its_queue(leitstand: Leitstand) -> None:
    ls = leitstand
    # research's jobs run only on research-0000, even while every B200 node is idle.
    ls.submit(training_job("r-train", "research", gpus=8))
    ls.wait_status("research", "r-train", phase="Running")
    ls.submit(training_job("r-more", "research", gpus=8))
    assert ls.node_of(ls.seen.job_pods("research", "r-train")) == ["research-0000"]
    waiting = ls.seen.wait(lambda: ls.seen.status("research", "r-more").get("reason"), "r-more's reason")
    assert ls.seen.status("research", "r-more")["phase"] == "Pending", waiting
    ls.kubectl("delete", "trainingjobs", "r-train", "r-more", "-n", "research", user="research")

    # The shared nodes fill up; research-0000 is the only free room, and it is not offered to tenant-a.
    ls.submit(training_job("a-fill", replicas=2, gpus=8))
    ls.submit(training_job("b-fill", "tenant-b", replicas=2, gpus=8))
    ls.wait_status("tenant-a", "a-fill", phase="Running")
    ls.wait_status("tenant-b", "b-fill", phase="Running")
    ls.seen.wait(lambda: not ls.seen.job_pods("research", "r-train"), "research-0000 to be free")
    ls.submit(training_job("a-extra", gpus=8))
    ls.seen.wait(lambda: ls.seen.status("tenant-a", "a-extra").get("reason"), "a-extra's reason")
    ls.seen.holds(lambda: not ls.seen.job_pods("tenant-a", "a-extra"), "a-extra has no pod", seconds=2)
    assert ls.seen.status("tenant-a", "a-extra")["phase"] == "Pending"
    others = {node for key, _job, node in ls.seen.bindings if not key.startswith("research/")}
    assert "research-0000" not in others, others


def test_data_residency_keeps_a_job_in_its_jurisdiction(leitstand: Leitstand) -> None:
    ls = leitstand
    ls.submit(training_job("a-fr", replicas=2, gpus=1, dataResidency=["eu-fr"]),
              training_job("a-us", gpus=1, dataResidency=["us-east"]))
    ls.wait_status("tenant-a", "a-fr", phase="Running")
    nodes = ls.node_of(ls.seen.job_pods("tenant-a", "a-fr"))
    assert {ls.seen.labels[n]["leitstand.dev/jurisdiction"] for n in nodes} == {"eu-fr"}, nodes

    status = ls.wait_status("tenant-a", "a-us", reason="NoMatchingNodes")
    assert status["phase"] == "Pending" and "us-east" in status["message"], status["message"]
    assert ls.seen.job_pods("tenant-a", "a-us") == []


def test_a_namespace_cannot_spend_a_queue_it_is_not_listed_in(leitstand: Leitstand) -> None:
    ls = leitstand
    ls.submit(training_job("b-sneaky", "tenant-b", gpus=1, queue="tenant-a"))
    status = ls.wait_status("tenant-b", "b-sneaky", reason="NamespaceNotAllowed")
    assert status["phase"] == "Pending"
    assert "queue tenant-a accepts jobs from namespaces tenant-a, not tenant-b" in status["message"]
    ls.events("tenant-b", "b-sneaky", "NamespaceNotAllowed")
    ls.seen.holds(lambda: not ls.seen.job_pods("tenant-b", "b-sneaky"), "b-sneaky has no pod", seconds=1)


def test_deleting_a_trainingjob_removes_its_pods(leitstand: Leitstand) -> None:
    ls = leitstand
    ls.submit(training_job("a-gone", replicas=2, gpus=1))
    ls.wait_status("tenant-a", "a-gone", phase="Running")
    assert len(ls.seen.job_pods("tenant-a", "a-gone")) == 2
    ls.kubectl("delete", "trainingjob", "a-gone", "-n", "tenant-a", "--wait=false", user="tenant-a")
    ls.seen.wait(lambda: not ls.seen.job_pods("tenant-a", "a-gone"), "a-gone's pods to be deleted", 20)


def test_max_runtime_ends_a_job_failed_and_removes_its_pods(leitstand: Leitstand) -> None:
    ls = leitstand
    ls.submit(training_job("a-long", replicas=2, gpus=1, maxRuntimeSeconds=3))  # runs until stopped
    ls.wait_status("tenant-a", "a-long", phase="Running")
    status = ls.wait_status("tenant-a", "a-long", phase="Failed")
    assert status["reason"] == "MaxRuntimeExceeded", status
    assert "maxRuntimeSeconds=3" in status["message"]
    assert condition(status, "Finished")["status"] == "True"
    ran = _seconds(status["finishedAt"]) - _seconds(status["startedAt"])
    assert 3 <= ran <= 10, ran
    ls.seen.wait(lambda: not ls.seen.job_pods("tenant-a", "a-long"), "a-long's pods to be deleted", 20)
    ls.events("tenant-a", "a-long", "MaxRuntimeExceeded")


def test_a_failing_replica_restarts_the_gang_until_the_backoff_limit_then_fails_it(leitstand: Leitstand) -> None:
    ls = leitstand
    ls.submit(training_job("a-flaky", replicas=2, gpus=1, runs_for="1s", fails=True, backoffLimit=1))
    status = ls.wait_status("tenant-a", "a-flaky", phase="Failed", timeout_seconds=45)
    assert status["reason"] == "ReplicaFailed", status
    assert status["restarts"] == 1 and status["preemptions"] == 0
    assert "backoffLimit 1 reached" in status["message"], status["message"]
    assert condition(status, "Finished")["status"] == "True"
    restarting = ls.passed_through("tenant-a", "a-flaky", phase="Pending", reason="Restarting")
    assert restarting["restarts"] == 1
    ls.events("tenant-a", "a-flaky", "Restarting")
    ls.events("tenant-a", "a-flaky", "Failed")
    # two attempts of two replicas each were bound, the first one removed whole before the second
    assert len(ls.seen.ever_bound("tenant-a", "a-flaky")) == 4


def plain_pod(name: str, namespace: str, queue_name: str, gpus: int) -> dict[str, Any]:
    """A pod a tenant hands to Leitstand directly: schedulerName leitstand and the queue label."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"leitstand.dev/queue": queue_name}},
        "spec": {
            "schedulerName": "leitstand",
            "containers": [{"name": "lab", "image": "registry.example/notebook:1",
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
        },
    }


def test_a_plain_pod_for_leitstand_is_bound_with_its_gpus_annotated_or_says_why_not(leitstand: Leitstand) -> None:
    ls = leitstand
    ls.submit(plain_pod("notebook", "tenant-a", "tenant-a", gpus=2),
              plain_pod("too-big", "tenant-a", "tenant-a", gpus=16))
    ls.submit(plain_pod("sneaky", "tenant-b", "tenant-a", gpus=1))

    def pod(namespace: str, name: str) -> dict[str, Any]:
        return next((p for p in ls.seen.pods_in(namespace) if p["metadata"]["name"] == name), {})

    def bound(namespace: str, name: str) -> dict[str, Any] | None:
        found = pod(namespace, name)
        return found if found.get("spec", {}).get("nodeName") else None

    notebook = ls.seen.wait(lambda: bound("tenant-a", "notebook"), "the notebook pod to be bound")
    gpus = assigned(notebook)  # annotated before the binding
    assert len(set(gpus)) == 2 and all(0 <= g < ls.seen.capacity[notebook["spec"]["nodeName"]] for g in gpus)
    ls.seen.wait(lambda: pod("tenant-a", "notebook").get("status", {}).get("phase") == "Running",
                 "the notebook pod to run")

    def unscheduled(namespace: str, name: str) -> dict[str, Any] | None:
        return condition(pod(namespace, name).get("status", {}), "PodScheduled") or None

    # Pods that cannot be placed say why where kubectl describe shows it: PodScheduled False.
    for namespace, name, code in (("tenant-a", "too-big", "NeverFits"), ("tenant-b", "sneaky", "NamespaceNotAllowed")):
        scheduled = ls.seen.wait(functools.partial(unscheduled, namespace, name), f"{namespace}/{name} to say why")
        assert scheduled["status"] == "False" and scheduled["reason"] == "Unschedulable", scheduled
        assert scheduled["message"].startswith(f"{code}: "), scheduled["message"]
        assert not pod(namespace, name)["spec"].get("nodeName")


def test_gpus_of_a_pod_bound_by_someone_else_are_not_offered(leitstand: Leitstand) -> None:
    ls = leitstand
    # The admin binds a pod with 8 GPUs directly to b200-0000 (no scheduler involved).
    foreign = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "foreign", "namespace": "tenant-b"},
        "spec": {
            "nodeName": "b200-0000",
            "containers": [{"name": "main", "image": "registry.example/other:1",
                            "resources": {"limits": {"nvidia.com/gpu": "8"}}}],
        },
    }
    ls.submit(foreign, user="admin")
    ls.seen.wait(lambda: [p for p in ls.seen.pods_in("tenant-b") if p["status"].get("phase") == "Running"],
                 "the foreign pod to run")

    # Three whole B200 nodes are left: a 3 x 8 gang fits on them, another 8 GPUs do not.
    ls.submit(training_job("a-fill", replicas=3, gpus=8))
    ls.wait_status("tenant-a", "a-fill", phase="Running")
    assert "b200-0000" not in ls.node_of(ls.seen.job_pods("tenant-a", "a-fill"))
    ls.submit(training_job("a-more", gpus=8))
    status = ls.wait_status("tenant-a", "a-more", reason="Insufficient")
    assert status["phase"] == "Pending"
    ls.seen.holds(lambda: not ls.seen.job_pods("tenant-a", "a-more"), "a-more has no pod", seconds=2)
    assert "b200-0000" not in ls.seen.ever_bound("tenant-a", "a-more") + ls.seen.ever_bound("tenant-a", "a-fill")


def test_a_queue_limit_raised_while_a_job_waits_admits_it(leitstand: Leitstand) -> None:
    ls = leitstand
    ls.kubectl("apply", "-f", "-", stdin=json.dumps(
        queue("industry", gpu={"quota": 8, "limit": 8}, namespaces=["industry"])))
    ls.submit(training_job("i-train", "industry", replicas=2, gpus=8))
    status = ls.wait_status("industry", "i-train", reason="QueueAtLimit")
    assert status["phase"] == "Pending" and "limit" in status["message"], status["message"]
    ls.seen.holds(lambda: not ls.seen.job_pods("industry", "i-train"), "i-train has no pod", seconds=1)

    ls.queue_status("industry", user="industry", pendingJobs=1, pendingGPUs="16", runningJobs=0, allocated="0")

    ls.kubectl("patch", "queue", "industry", "--type=merge", "-p", '{"spec": {"gpu": {"limit": 16}}}')
    ls.wait_status("industry", "i-train", phase="Running")
    assert len(ls.seen.job_pods("industry", "i-train")) == 2
    ls.queue_status("industry", user="industry", pendingJobs=0, runningJobs=1, allocated="16")


def test_a_job_naming_a_missing_priority_class_waits_until_it_exists(leitstand: Leitstand) -> None:
    ls = leitstand
    ls.submit(training_job("a-nightly", gpus=1, priorityClassName="leitstand-nightly"))
    status = ls.wait_status("tenant-a", "a-nightly", reason="UnknownPriorityClass")
    assert status["phase"] == "Pending" and "'leitstand-nightly' does not exist" in status["message"]
    ls.events("tenant-a", "a-nightly", "UnknownPriorityClass")
    assert ls.seen.job_pods("tenant-a", "a-nightly") == []

    ls.kubectl("apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
        "metadata": {"name": "leitstand-nightly", "labels": {E2E_LABEL: "operator"},
                     "annotations": {"leitstand.dev/preemptible": "true"}},
        "value": 40, "preemptionPolicy": "Never",
    }))
    ls.wait_status("tenant-a", "a-nightly", phase="Running")


def test_a_gang_on_a_lost_node_is_evicted_whole_and_runs_again_elsewhere(leitstand: Leitstand) -> None:
    ls = leitstand
    ls.submit(training_job("a-train", replicas=2, gpus=8))
    ls.wait_status("tenant-a", "a-train", phase="Running")
    before = ls.node_of(ls.seen.job_pods("tenant-a", "a-train"))
    lost = before[0]
    node = ls.cluster.get_json("node", lost)
    try:
        ls.kubectl("delete", "node", lost)
        requeued = ls.seen.wait(
            lambda: [s for s in ls.seen.history("tenant-a", "a-train") if s.get("reason") == "NodeLost"],
            "a-train to be requeued for the lost node")[0]
        assert requeued["phase"] == "Pending" and lost in requeued["message"], requeued
        status = ls.wait_status("tenant-a", "a-train", phase="Running")
        after = ls.node_of(ls.seen.job_pods("tenant-a", "a-train"))
        assert lost not in after and len(after) == 2, after
        assert status["restarts"] == 0  # a lost node is not the job's failure
        ls.events("tenant-a", "a-train", "NodeLost")
    finally:
        _recreate_node(ls, node)


# -- small helpers --------------------------------------------------------------------------------------


def poll(check: Callable[[], T | None], what: str, timeout_seconds: float) -> T:
    """For what no watch follows (Events, Queues): `check()`'s first truthy value, asked every 0.3 s."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_seconds:g} s waiting for {what}")
        time.sleep(0.3)


def _seconds(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _recreate_node(ls: Leitstand, node: dict[str, Any]) -> None:
    """Put a deleted node back as the cluster made it (KWOK takes it over again)."""
    name = node["metadata"]["name"]
    if ls.cluster.kubectl("get", "node", name, check=False).returncode == 0:
        return
    for field in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
        node["metadata"].pop(field, None)
    node["status"].pop("conditions", None)
    ls.kubectl("create", "-f", "-", stdin=json.dumps(node))
    ls.kubectl("wait", "--for=condition=Ready", f"node/{name}", "--timeout=30s")
