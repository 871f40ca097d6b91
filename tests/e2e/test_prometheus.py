"""The Grafana dashboard proven against the real thing: a real Prometheus (Debian's `prometheus`) scrapes
`leitstand run` on the local cluster while tenants' TrainingJobs borrow, get reclaimed and preempted,
then every PromQL expression of every panel of `deploy/grafana/leitstand.json` is evaluated through
Prometheus' HTTP API (`/api/v1/query`): each must parse and return data.

The scrape target is `leitstand run`'s own `GET /metrics` (its HTTP API, `api.port` of the service
config), with a bearer token of a service account bound to the built-in ClusterRole
`system:monitoring` (which allows `get` on the non-resource URL /metrics) — how Prometheus scrapes it
in a cluster. If this `leitstand run` does not serve /metrics yet, the test starts the same service
with `Metrics.render()` served beside it instead, and says so.

The scenario on the session `cluster` (b200-0000..0003 with 8 GPUs, l40s-0000/0001 with 2 GPUs):

    prom-dept    quota 16                       (a department: parent of prom-a)
      prom-a     quota 16, limit 16             namespaces [tenant-a]
    prom-b       quota 8                        namespaces [tenant-b]

1. tenant-b fills all 32 B200 GPUs with two preemptible 2 x 8 gangs (24 borrowed);
2. tenant-a submits a 2 x 8 gang within its quota: one tenant-b gang is reclaimed (by_queue prom-a);
3. tenant-a submits a non-preemptible 1 x 8 job (leitstand-build): prom-a is at its limit, so its own
   training gang is preempted (higher priority in the same queue) and waits (QueueAtLimit);
4. the platform engineer cordons l40s-0001: one node unschedulable, and the other L40S node's two free
   GPUs are stranded (no waiting 8-GPU replica fits a 2-GPU node);
5. so at evaluation time jobs run, wait for two reasons, and every counter has moved.

Prometheus listens on 127.0.0.1 on a free port with its own data folder under pytest's tmp dir and is
stopped by its PID; so is `leitstand run`. Grafana's variables are replaced the way Grafana would
fill them: `$queue` → `.*` (All), `$__rate_interval` → the scenario's length, `$__range` → more.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from leitstand.operator.api import dashboard
from leitstand.operator.cluster.layout import repo_root
from leitstand.operator.service.launcher import OperatorProcess, start_operator

from .conftest import PHASE_REPORTS, Cluster

DEPLOY = repo_root() / "deploy"
INSTALL = [DEPLOY / "namespace.yaml", DEPLOY / "crds", DEPLOY / "priorityclasses.yaml", DEPLOY / "rbac"]
SYSTEM_NAMESPACE = "leitstand-system"
LABEL = "leitstand.dev/e2e"
LABEL_VALUE = "prometheus"
CORDONED = "l40s-0001"
SCRAPER = "prometheus-scraper"
"""The service account Prometheus scrapes with (bound to system:monitoring)."""
RATE_INTERVAL = "5m"
"""What `$__rate_interval` stands for here: longer than the scenario, so every event is in the window."""
RANGE = "15m"

T = TypeVar("T")


def poll(check: Callable[[], T | None], what: str, timeout_seconds: float, every: float = 0.5) -> T:
    deadline = time.monotonic() + timeout_seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_seconds:g} s waiting for {what}")
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_get(url: str, token: str | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return int(reply.status), bytes(reply.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())
    except OSError:
        return 0, b""


# -- objects as people write them --------------------------------------------------------------------


def queue(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "leitstand.dev/v1alpha1", "kind": "Queue",
            "metadata": {"name": name, "labels": {LABEL: LABEL_VALUE}}, "spec": spec}


QUEUES = [
    queue("prom-dept", gpu={"quota": 16}),
    queue("prom-a", parent="prom-dept", gpu={"quota": 16, "limit": 16}, namespaces=["tenant-a"]),
    queue("prom-b", gpu={"quota": 8}, namespaces=["tenant-b"]),
]


def training_job(name: str, namespace: str, queue_name: str, *, replicas: int, gpus: int,
                 priority_class: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"queue": queue_name, "replicas": replicas, "gpus": gpus, "template": {"spec": {
        "containers": [{"name": "trainer", "image": "registry.example/leitstand/train:1"}]}}}
    if priority_class:
        spec["priorityClassName"] = priority_class
    return {"apiVersion": "leitstand.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name, "namespace": namespace, "labels": {LABEL: LABEL_VALUE}}, "spec": spec}


# -- Prometheus ---------------------------------------------------------------------------------------


@dataclass
class Prometheus:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def api(self, path: str, **params: str) -> dict[str, Any]:
        status, body = http_get(f"{self.url}{path}?{urllib.parse.urlencode(params)}")
        try:
            reply: dict[str, Any] = json.loads(body)
        except ValueError:
            reply = {"status": "error", "error": f"HTTP {status}: {body[:300]!r}"}
        return reply

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("/api/v1/query", query=expr)


def start_prometheus(folder: Path, target: str, token_file: Path | None) -> Prometheus:
    """Debian's prometheus with deploy/prometheus/prometheus.yml, pointed at `target`, scraping every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: run scripts/setup.sh (it installs Debian's package)")
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "leitstand"]
    job["static_configs"][0]["targets"] = [target]
    if token_file is None:
        job.pop("authorization", None)
    else:
        job["authorization"]["credentials_file"] = str(token_file)
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = folder / "prometheus.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [binary, f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    prometheus = Prometheus(proc, f"http://127.0.0.1:{port}", log)
    try:
        poll(lambda: proc.poll() is not None or http_get(f"{prometheus.url}/-/ready")[0] == 200,
             "Prometheus to be ready", 60)
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
    except BaseException:
        prometheus.stop()
        raise
    return prometheus


# -- leitstand run with /metrics ------------------------------------------------------------------------

SIDECAR = r'''
import sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from leitstand.operator.api.metrics import Metrics
from leitstand.operator.service import loop, run

PORT = int(sys.argv.pop(1))


class WithMetrics(loop.Scheduler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        metrics = Metrics(self)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body, content_type = metrics.render(self.headers.get("Accept"))
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()


run.Scheduler = WithMetrics
from leitstand.operator.cli import main
main()
'''
"""`leitstand run` with `Metrics.render()` served on a side port: only for a `leitstand run` whose HTTP
API does not serve /metrics yet (the test says so when it uses this)."""


@dataclass
class Target:
    operator: OperatorProcess
    address: str
    """host:port Prometheus scrapes."""
    real: bool
    """True: leitstand run's own GET /metrics; False: the side server of `SIDECAR`."""


def operator_config(folder: Path, api_port: int | None) -> Path:
    config: dict[str, Any] = {
        # the scenario preempts and reclaims jobs seconds after they start
        "scheduler": {"min_runtime_seconds": 1},
        "bind_retry_seconds": 1,
        "cycle_max_interval_seconds": 1,
    }
    from leitstand.operator.service.config import ServiceConfig

    if "api" in ServiceConfig.model_fields:
        config["api"] = {"port": api_port or 0, "host": "127.0.0.1"} | ({} if api_port else {"enabled": False})
    path = folder / f"config-{api_port or 'sidecar'}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_target(cluster: Cluster, folder: Path, token: str) -> Target:
    kubeconfig = cluster.kubeconfig("leitstand-operator")
    port = free_port()
    operator = start_operator(kubeconfig, folder / "leitstand-run.log", identity="e2e-prometheus",
                              config=operator_config(folder, port))
    if not operator.wait_for_log("leading as", timeout_seconds=120):
        operator.stop()
        raise AssertionError(f"leitstand run did not start leading:\n{operator.log_text()[-5000:]}")
    url = f"http://127.0.0.1:{port}/metrics"
    deadline = time.monotonic() + 10
    status, body = http_get(url, token)
    while status == 0 and time.monotonic() < deadline:  # not listening (yet)
        time.sleep(0.5)
        status, body = http_get(url, token)
    if status == 200 and b"leitstand_leader" in body:
        assert http_get(url)[0] == 401, "GET /metrics without a token must be refused"
        return Target(operator, f"127.0.0.1:{port}", real=True)
    if status not in (0, 404):  # the route exists but refused a scraper bound to system:monitoring
        operator.stop()
        raise AssertionError(f"GET /metrics with the scraper's token: HTTP {status} {body[:500]!r}")
    # This leitstand run does not serve /metrics (yet): the same service with Metrics.render() beside it.
    operator.stop()
    side = free_port()
    env = {**os.environ, "NUMBA_CACHE_DIR": os.environ.get(
        "NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "leitstand" / "numba"))}
    log = folder / "leitstand-run-sidecar.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", SIDECAR, str(side), "run", f"--kubeconfig={kubeconfig}",
             "--identity=e2e-prometheus", f"--config={operator_config(folder, None)}"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    operator = OperatorProcess(proc, log)
    if not operator.wait_for_log("leading as", timeout_seconds=120):
        operator.stop()
        raise AssertionError(f"leitstand run (with the metrics sidecar) did not lead:\n{operator.log_text()[-5000:]}")
    return Target(operator, f"127.0.0.1:{side}", real=False)


# -- the cluster side -----------------------------------------------------------------------------------


def install(cluster: Cluster) -> None:
    """deploy/ as a platform engineer applies it (retried while an earlier test's uninstall finishes)."""
    args = [arg for path in INSTALL for arg in ("-f", str(path))]

    def applied() -> bool:
        return cluster.kubectl("apply", *args, check=False).returncode == 0

    poll(applied, "deploy/ to apply (an earlier uninstall may still be finishing)", 120, every=2)
    cluster.kubectl("wait", "--for=condition=Established", "crd/trainingjobs.leitstand.dev",
                    "crd/queues.leitstand.dev", "--timeout=60s")


def scraper_token(cluster: Cluster, folder: Path) -> tuple[str, Path]:
    """A service account bound to system:monitoring and a token for it (TokenRequest), in a file."""
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": SCRAPER, "namespace": SYSTEM_NAMESPACE, "labels": {LABEL: LABEL_VALUE}}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": f"{SCRAPER}:monitoring", "labels": {LABEL: LABEL_VALUE}},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:monitoring"},
         "subjects": [{"kind": "ServiceAccount", "name": SCRAPER, "namespace": SYSTEM_NAMESPACE}]},
    ]}))
    token = cluster.kubectl("create", "token", SCRAPER, "-n", SYSTEM_NAMESPACE, "--duration=1h").stdout.strip()
    path = folder / "scraper.token"
    path.write_text(token)
    path.chmod(0o600)
    return token, path


def job_status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    reply = cluster.kubectl("get", "trainingjob", name, "-n", namespace, "-o", "json", user=namespace, check=False)
    return dict(json.loads(reply.stdout).get("status") or {}) if reply.returncode == 0 else {}


def wait_status(cluster: Cluster, namespace: str, name: str, timeout_seconds: float = 60, **expected: Any
                ) -> dict[str, Any]:
    last: dict[str, Any] = {}

    def matches() -> dict[str, Any] | None:
        nonlocal last
        last = job_status(cluster, namespace, name)
        return last if all(last.get(k) == v for k, v in expected.items()) else None

    try:
        return poll(matches, f"{namespace}/{name} with {expected}", timeout_seconds)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; its status: {json.dumps(last)}") from None


def submit(cluster: Cluster, *jobs: dict[str, Any]) -> None:
    [namespace] = {j["metadata"]["namespace"] for j in jobs}
    cluster.kubectl("apply", "-f", "-", user=namespace,
                    stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(jobs)}))


def clean_up(cluster: Cluster) -> None:
    cluster.kubectl("delete", "trainingjobs", "-A", "-l", f"{LABEL}={LABEL_VALUE}", "--wait=false", check=False)

    def pods_gone() -> bool:
        pods = cluster.get_json("pods", "-A", "-l", "leitstand.dev/job")["items"]
        return not pods

    try:
        poll(pods_gone, "the scenario's pods to be gone", 60)
    finally:
        cluster.kubectl("uncordon", CORDONED, check=False)
        cluster.kubectl("delete", "queues", "-l", f"{LABEL}={LABEL_VALUE}", "--wait=false", check=False)
        cluster.kubectl("delete", "clusterrolebinding", f"{SCRAPER}:monitoring", "--ignore-not-found", check=False)
        cluster.kubectl("delete", "serviceaccount", SCRAPER, "-n", SYSTEM_NAMESPACE, "--ignore-not-found",
                        check=False)


@pytest.fixture()
def stack(cluster: Cluster, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Target, Prometheus]]:
    """deploy/ installed, the queues, `leitstand run` serving /metrics, and Prometheus scraping it."""
    install(cluster)
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": QUEUES}))
    token, token_file = scraper_token(cluster, tmp_path)
    target = start_target(cluster, tmp_path, token)
    prometheus: Prometheus | None = None
    try:
        prometheus = start_prometheus(tmp_path, target.address, token_file if target.real else None)
        yield target, prometheus
    finally:
        failed = any(r.failed for r in request.node.stash.get(PHASE_REPORTS, {}).values())
        try:
            clean_up(cluster)
        finally:
            was_alive = target.operator.alive()
            code = target.operator.stop()
            if prometheus is not None:
                prometheus.stop()
                if failed:
                    print(f"---- prometheus log ----\n{prometheus.log.read_text()[-5000:]}")
            if failed or not was_alive or code != 0:
                print(f"---- leitstand run log (exit {code}) ----\n{target.operator.log_text()[-20000:]}")
        assert was_alive and code == 0, f"leitstand run ended with exit code {code} (alive until the end: {was_alive})"


# -- the test -------------------------------------------------------------------------------------------


def grafana_expr(expr: str) -> str:
    """The expression as Grafana sends it with the queue variable at All."""
    return (expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__range", RANGE)
            .replace("$queue", ".*"))


def reached(value_of: Callable[[str], float | None], expr: str, expected: float) -> bool:
    value = value_of(expr)
    return value is not None and value >= expected * 0.99


def has_data(reply: dict[str, Any]) -> bool:
    """Success, a non-empty result, and at least one number that is not NaN."""
    if reply.get("status") != "success":
        return False
    data = reply.get("data") or {}
    result: Any = data.get("result")
    if data.get("resultType") == "scalar":
        return result is not None and not math.isnan(float(result[1]))
    return bool(result) and any(not math.isnan(float(r["value"][1])) for r in result or ())


def test_every_dashboard_expression_returns_data_from_a_real_prometheus(
    cluster: Cluster, stack: tuple[Target, Prometheus]
) -> None:
    target, prometheus = stack
    if not target.real:
        print("NOTE: this leitstand run does not serve GET /metrics yet; scraped Metrics.render() beside it")
    started = time.monotonic()
    # Prometheus scrapes leitstand run (its target is up, the token accepted).
    poll(lambda: has_data(prometheus.query('up{job="leitstand"} == 1')), "the leitstand target to be up", 30)

    # 1. tenant-b borrows the whole B200 pool: 2 x (2 x 8) GPUs on a quota of 8.
    submit(cluster, *(training_job(f"b-fill-{i}", "tenant-b", "prom-b", replicas=2, gpus=8) for i in (1, 2)))
    for i in (1, 2):
        wait_status(cluster, "tenant-b", f"b-fill-{i}", phase="Running")
    # 2. tenant-a wants its quota: one tenant-b gang is reclaimed for it.
    submit(cluster, training_job("a-train", "tenant-a", "prom-a", replicas=2, gpus=8))
    wait_status(cluster, "tenant-a", "a-train", phase="Running")
    reclaimed = poll(lambda: [i for i in (1, 2) if job_status(cluster, "tenant-b", f"b-fill-{i}").get("reason")
                              == "Reclaimed"], "a tenant-b gang to be reclaimed", 30)
    assert len(reclaimed) == 1
    # 3. a non-preemptible job of tenant-a at the queue's limit preempts tenant-a's own training gang.
    submit(cluster, training_job("a-build", "tenant-a", "prom-a", replicas=1, gpus=8,
                                 priority_class="leitstand-build"))
    wait_status(cluster, "tenant-a", "a-build", phase="Running")
    wait_status(cluster, "tenant-a", "a-train", phase="Pending", reason="Preempted")
    # 4. a node is cordoned.
    cluster.kubectl("cordon", CORDONED)

    # Prometheus has seen all of it: the reclaim and the preemption have moved their counters, and the
    # cordoned node is scraped.
    def value_of(expr: str) -> float | None:
        reply = prometheus.query(grafana_expr(expr))
        result = reply.get("data", {}).get("result") if reply.get("status") == "success" else None
        return sum(float(r["value"][1]) for r in result) if result else None

    for expr, expected in (
        ('sum(increase(leitstand_queue_evictions_total{kind="reclaim", queue="prom-b", by_queue="prom-a"}'
         '[$__range]))', 1),
        ('sum(increase(leitstand_queue_evictions_total{kind="preempt", queue="prom-a", by_queue="prom-a"}'
         '[$__range]))', 1),
        ('sum(leitstand_cluster_nodes{schedulable="false"})', 1),
    ):
        poll(functools.partial(reached, value_of, expr, expected), f"{expr} to reach {expected} on Prometheus", 30)

    # 4. Every expression of every panel: parses, and returns data.
    expressions = dashboard.expressions()
    replies: dict[str, dict[str, Any]] = {}

    def all_have_data() -> bool:
        for _title, expr in expressions:
            if expr not in replies or not has_data(replies[expr]):
                replies[expr] = prometheus.query(grafana_expr(expr))
        return all(has_data(r) for r in replies.values())

    try:
        poll(all_have_data, "every dashboard expression to return data", 30, every=1)
    except AssertionError:
        missing = [f"{title}: {expr} -> {json.dumps(replies[expr])[:300]}"
                   for title, expr in expressions if not has_data(replies[expr])]
        raise AssertionError(f"{len(missing)} of {len(expressions)} expressions have no data:\n"
                             + "\n".join(missing)) from None
    seconds = time.monotonic() - started
    for title, expr in expressions:  # what each panel would show now (printed with -s)
        shown = [(r.get("metric", {}), r["value"][1]) for r in replies[expr]["data"]["result"]][:4]
        print(f"{title} | {grafana_expr(expr)} -> {shown}")

    # What the panels show agrees with what the API server says.
    def scalar(expr: str) -> float:
        return sum(float(r["value"][1]) for r in prometheus.query(expr)["data"]["result"])

    assert scalar('leitstand_queue_allocated_gpus{queue="prom-a"}') == 8
    assert scalar('leitstand_queue_allocated_gpus{queue="prom-dept"}') == 8  # a parent covers its subtree
    assert scalar('leitstand_queue_allocated_gpus{queue="prom-b"}') == 16
    assert scalar('leitstand_queue_limit_gpus{queue="prom-a"}') == 16
    assert scalar('leitstand_pending_jobs_by_reason{queue="prom-a", reason="QueueAtLimit"}') == 1
    assert scalar('sum(leitstand_queue_evicted_gpus_total{kind="reclaim", queue="prom-b", by_queue="prom-a"})') == 16
    assert scalar('sum(leitstand_queue_evicted_gpus_total{kind="preempt", queue="prom-a", by_queue="prom-a"})') == 16
    assert scalar("sum(leitstand_cluster_gpus)") == 36
    assert scalar("sum(leitstand_cluster_gpus_allocated)") == 24
    # free: 8 B200 GPUs (a-train's second node) and l40s-0000's 2 (l40s-0001 is cordoned); no waiting
    # 8-GPU replica fits a 2-GPU node, so those 2 are stranded
    assert scalar('sum(leitstand_cluster_gpus_free{model="NVIDIA-B200"})') == 8
    assert scalar('sum(leitstand_cluster_gpus_free{model="NVIDIA-L40S"})') == 2
    assert scalar('sum(leitstand_cluster_gpus_stranded{model="NVIDIA-L40S"})') == 2
    assert scalar('sum(leitstand_cluster_gpus_stranded{model="NVIDIA-B200"})') == 0
    assert scalar("max(leitstand_leader)") == 1 and scalar("min(leitstand_ready)") == 1
    # the rate panels show the events, not only series: both kinds of eviction, both queues' waits
    panel: dict[str, str] = {}
    for title, expr in expressions:
        panel.setdefault(title, expr)  # a panel's first query
    by_kind = {r["metric"]["kind"]: float(r["value"][1]) for r in replies[panel["Evictions per minute by kind"]][
        "data"]["result"]}
    assert by_kind.get("reclaim", 0) > 0 and by_kind.get("preempt", 0) > 0, by_kind
    who = {(r["metric"]["queue"], r["metric"]["by_queue"], r["metric"]["kind"]): float(r["value"][1])
           for r in prometheus.query(grafana_expr(panel["Who took GPUs from whom"]))["data"]["result"]}
    assert who.keys() == {("prom-b", "prom-a", "reclaim"), ("prom-a", "prom-a", "preempt")}, who
    # 16 GPUs each; increase() extrapolates to the end of the window, which a few seconds of samples
    # make visible (the raw counters are exactly 16, above)
    assert all(gpus >= 15.9 for gpus in who.values()), who
    waits = prometheus.query(grafana_expr(
        "histogram_quantile(0.9, sum by (le, queue) (rate(leitstand_queue_admission_wait_seconds_bucket[$__range])))"))
    assert {r["metric"]["queue"] for r in waits["data"]["result"] if not math.isnan(float(r["value"][1]))} == {
        "prom-a", "prom-b"}, waits
    source = "GET /metrics of leitstand run" if target.real else "Metrics.render() beside leitstand run"
    print(f"{len(expressions)} expressions of {len(dashboard.panels())} panels evaluated on Prometheus, all with "
          f"data, {seconds:.0f} s after the scrape target ({source}) was up")
