"""A node stops reporting Ready while a tenant's gang runs on it (KWOK holds it NotReady while the node
carries `leitstand.dev/sim-not-ready=true`, deploy/kwok/sim-node-not-ready.yaml). After
`node_lost_grace_seconds` the operator evicts the gang whole — its pod on the healthy node too —
requeues it with the reason NodeLost on the TrainingJob's status and an Event naming the node, and the
gang runs again on the nodes that are Ready, to Succeeded. Deleted nodes are covered by
test_operator.py; the campaign with both (`leitstand bench nodes`) is in docs/faults.md."""

from __future__ import annotations

import contextlib
import http.client
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from leitstand.operator.faults import _install, _token, api_as, set_not_ready
from leitstand.operator.service.launcher import OperatorProcess, start_operator

from .conftest import Cluster, cluster_cli, start_cluster

GROUP = "/apis/leitstand.dev/v1alpha1"


def wait_until(check: Callable[[], Any], what: str, timeout_seconds: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout_seconds:g} s waiting for {what}")


class StatusHistory(threading.Thread):
    """Every status a TrainingJob of the namespace passes through, from a watch (short states too)."""

    def __init__(self, run: Path, namespace: str) -> None:
        super().__init__(daemon=True)
        state = json.loads((run / "state.json").read_text())
        self.server = urlsplit(state["server"])
        self.context = ssl.create_default_context(cafile=str(run / "pki" / "ca.crt"))
        self.token = _token(run, "admin")
        self.namespace = namespace
        self.seen: list[tuple[str, str, str, str]] = []
        """(job, phase, reason, message)"""
        self.errors: list[Any] = []
        self.closed = False

    def run(self) -> None:
        version = ""
        while not self.closed:
            connection = http.client.HTTPSConnection(self.server.hostname or "127.0.0.1", self.server.port,
                                                     context=self.context, timeout=30)
            # Short watches (the server ends each within 5 s), resumed from the last version seen: the
            # thread notices `closed` without another thread closing its socket under it.
            query = f"watch=1&timeoutSeconds=5&resourceVersion={version}"
            with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
                connection.request("GET", f"{GROUP}/namespaces/{self.namespace}/trainingjobs?{query}",
                                   headers={"Authorization": f"Bearer {self.token}"})
                for line in connection.getresponse():
                    event = json.loads(line)
                    if "object" not in event or event.get("type") == "ERROR":
                        self.errors.append(event)
                        version = ""
                        break
                    obj = event["object"]
                    version = obj["metadata"]["resourceVersion"]
                    status = obj.get("status") or {}
                    self.seen.append((obj["metadata"]["name"], status.get("phase", ""), status.get("reason", ""),
                                      status.get("message", "")))
            connection.close()
            time.sleep(0.1)

    def close(self) -> None:
        self.closed = True
        self.join(15)


@pytest.fixture
def three_nodes(tmp_path: Path) -> Iterator[Cluster]:
    run = tmp_path / "run"
    cluster = start_cluster(run, "--nodes", "3")
    try:
        yield cluster
    finally:
        cluster_cli(run, "down")


def test_a_gang_on_a_node_that_stays_not_ready_is_evicted_whole_and_requeued_with_a_reason(
    three_nodes: Cluster, tmp_path: Path
) -> None:
    run = three_nodes.run
    admin = api_as(run, "admin")
    _install(run, admin)
    config = tmp_path / "operator.yaml"
    config.write_text("node_lost_grace_seconds: 2\ncycle_max_interval_seconds: 1\napi: {enabled: false}\n")
    operator: OperatorProcess = start_operator(run / "leitstand-operator.kubeconfig", tmp_path / "operator.log",
                                               config=config)
    history = StatusHistory(run, "tenant-a")
    history.start()
    try:
        assert operator.wait_for_log("leading as", 120), operator.log_text()[-3000:]
        job = {"apiVersion": "leitstand.dev/v1alpha1", "kind": "TrainingJob",
               "metadata": {"name": "llm-pretrain", "namespace": "tenant-a"},
               "spec": {"queue": "tenant-a", "replicas": 2, "gpus": 8, "template": {
                   "metadata": {"annotations": {"leitstand.dev/sim-duration": "12s"}},
                   "spec": {"containers": [{"name": "main", "image": "registry.example/train:1"}]}}}}
        three_nodes.kubectl("apply", "-f", "-", user="tenant-a", stdin=json.dumps(job))

        def pods() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = three_nodes.get_json("pods", "-n", "tenant-a", "-l",
                                                               "leitstand.dev/job=llm-pretrain")["items"]
            return items

        def running() -> list[dict[str, Any]]:
            live = [p for p in pods() if not p["metadata"].get("deletionTimestamp")]
            ok = len(live) == 2 and all(p.get("status", {}).get("phase") == "Running" for p in live)
            return live if ok else []

        first = wait_until(running, "the gang Running on two nodes", 60)
        lost_node = first[0]["spec"]["nodeName"]
        set_not_ready(admin, lost_node, True)  # the platform engineer's node stops reporting

        second = wait_until(lambda: [p for p in running() if p["metadata"]["uid"] not in
                                     {q["metadata"]["uid"] for q in first}], "the gang running again", 60)
        # Evicted whole: neither pod of the first attempt is left, the one on the healthy node included.
        assert not {p["metadata"]["uid"] for p in first} & {p["metadata"]["uid"] for p in pods()}
        assert len(second) == 2 and lost_node not in {p["spec"]["nodeName"] for p in second}
        node = three_nodes.get_json("node", lost_node)
        assert [c["status"] for c in node["status"]["conditions"] if c["type"] == "Ready"] == ["False"]

        requeued = [s for s in history.seen if s[0] == "llm-pretrain" and s[2] == "NodeLost"]
        assert requeued and requeued[0][1] == "Pending", (history.seen, history.errors)
        assert lost_node in requeued[0][3]
        events = three_nodes.get_json("events", "-n", "tenant-a", "--field-selector",
                                      "reason=NodeLost,involvedObject.name=llm-pretrain", user="tenant-a")["items"]
        assert events and lost_node in events[0]["message"]

        wait_until(lambda: three_nodes.get_json("trainingjob", "llm-pretrain", "-n", "tenant-a", user="tenant-a")
                   .get("status", {}).get("phase") == "Succeeded", "the requeued gang Succeeded", 60)
    finally:
        history.close()
        code = operator.stop()
        admin.close_all()
    assert code == 0, operator.log_text()[-3000:]
