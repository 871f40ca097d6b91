"""The local cluster behaves like a real one: GPU nodes Ready with topology, pods bound through
pods/binding run and finish after their annotated duration, kube-scheduler places GPU pods, CRDs are
served with their schema, RBAC denies tenants, controllers collect garbage, and down/up is clean.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import Cluster, cluster_cli, start_cluster

CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.e2e.leitstand.dev}
spec:
  group: e2e.leitstand.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        description: A widget made for the end-to-end test.
        properties:
          spec:
            type: object
            properties:
              gpus: {type: integer, description: GPUs the widget wants.}
"""


def wait_for(check: Callable[[], bool], timeout_seconds: float, what: str) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_seconds} s waiting for {what}")


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    # The serviceaccount controller creates `default`; the ServiceAccount admission plugin needs it.
    wait_for(
        lambda: cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
        30,
        "default ServiceAccount",
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


def pod(name: str, gpus: int, scheduler: str | None = None, annotations: dict[str, str] | None = None) -> str:
    spec: dict[str, Any] = {
        "containers": [
            {"name": "main", "image": "train:latest", "resources": {"limits": {"nvidia.com/gpu": gpus}}}
        ],
    }
    if scheduler:
        spec["schedulerName"] = scheduler
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "annotations": annotations or {}},
            "spec": spec,
        }
    )


def bind(cluster: Cluster, namespace: str, name: str, node: str, user: str) -> int:
    """POST pods/binding with the user's bearer token, as Leitstand's binder does; return the HTTP status."""
    config = yaml.safe_load(cluster.kubeconfig(user).read_text())
    server = config["clusters"][0]["cluster"]["server"]
    token = config["users"][0]["user"]["token"]
    body = {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    }
    req = urllib.request.Request(
        f"{server}/api/v1/namespaces/{namespace}/pods/{name}/binding",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    context = ssl.create_default_context(cafile=str(cluster.run / "pki" / "ca.crt"))
    try:
        with urllib.request.urlopen(req, context=context, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


def phase(cluster: Cluster, namespace: str, name: str) -> str:
    return str(cluster.get_json("pod", name, "-n", namespace)["status"].get("phase", ""))


def test_nodes_ready_with_gpus_and_topology(cluster: Cluster) -> None:
    nodes = cluster.get_json("nodes")["items"]
    assert len(nodes) == 6
    for node in nodes:
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True", node["metadata"]["name"]
        labels = node["metadata"]["labels"]
        for key in (
            "leitstand.dev/spine",
            "leitstand.dev/rack",
            "leitstand.dev/nvlink-domain",
            "kubernetes.io/hostname",
            "nvidia.com/gpu.product",
            "leitstand.dev/node-pool",
            "leitstand.dev/jurisdiction",
        ):
            assert key in labels
        gpus = node["status"]["allocatable"]["nvidia.com/gpu"]
        assert gpus == ("8" if labels["leitstand.dev/node-pool"] == "b200" else "2")
        assert node["status"]["capacity"]["nvidia.com/gpu"] == gpus
    out = cluster.kubectl("get", "nodes", "-L", "leitstand.dev/rack,nvidia.com/gpu.product").stdout
    assert "NVIDIA-B200" in out and "NVIDIA-L40S" in out


@pytest.mark.parametrize(("fail", "expected"), [(False, "Succeeded"), (True, "Failed")])
def test_bound_pod_runs_then_finishes_after_its_duration(
    cluster: Cluster, namespace: str, fail: bool, expected: str
) -> None:
    annotations = {"leitstand.dev/sim-duration": "4s"}
    if fail:
        annotations["leitstand.dev/sim-fail"] = "true"
    cluster.kubectl("create", "-n", namespace, "-f", "-", stdin=pod("job-0", 8, "leitstand", annotations))
    time.sleep(1)
    assert (
        cluster.get_json("pod", "job-0", "-n", namespace)["spec"].get("nodeName") is None
    )  # nobody else binds
    assert bind(cluster, namespace, "job-0", "b200-0000", user="leitstand-operator") == 201
    start = time.monotonic()
    wait_for(lambda: phase(cluster, namespace, "job-0") == "Running", 20, "Running")
    wait_for(lambda: phase(cluster, namespace, "job-0") == expected, 30, expected)
    assert time.monotonic() - start >= 3.0
    status = cluster.get_json("pod", "job-0", "-n", namespace)["status"]
    assert status["containerStatuses"][0]["state"]["terminated"]["exitCode"] == (1 if fail else 0)


def test_kube_scheduler_places_gpu_pods(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("create", "-n", namespace, "-f", "-", stdin=pod("fits", 8))
    cluster.kubectl("create", "-n", namespace, "-f", "-", stdin=pod("too-big", 9))
    wait_for(lambda: phase(cluster, namespace, "fits") == "Running", 30, "kube-scheduler to place the pod")
    node = cluster.get_json("pod", "fits", "-n", namespace)["spec"]["nodeName"]
    assert node.startswith("b200-")  # the L40S nodes have only 2 GPUs
    wait_for(
        lambda: any(
            c.get("reason") == "Unschedulable"
            for c in cluster.get_json("pod", "too-big", "-n", namespace)["status"].get("conditions", [])
        ),
        30,
        "the 9-GPU pod to be reported Unschedulable",
    )


def test_crd_apply_and_explain(cluster: Cluster) -> None:
    cluster.kubectl("apply", "-f", "-", stdin=CRD)
    cluster.kubectl("wait", "--for=condition=Established", "crd/widgets.e2e.leitstand.dev", "--timeout=30s")

    def explained() -> bool:
        out = cluster.kubectl("explain", "widgets.spec", check=False).stdout
        return "GPUs the widget wants" in out

    wait_for(explained, 30, "kubectl explain to show the schema")


def test_tenant_tokens_are_limited_by_rbac(cluster: Cluster) -> None:
    denied = [
        ("get", "nodes"),
        ("get", "pods", "-n", "tenant-b"),
        ("create", "configmap", "x", "-n", "tenant-b"),
        ("get", "secrets", "-n", "kube-system"),
    ]
    for args in denied:
        proc = cluster.kubectl(*args, user="tenant-a", check=False)
        assert proc.returncode != 0 and "forbidden" in proc.stderr.lower(), (args, proc.stderr)
    cluster.kubectl("create", "configmap", f"ok-{uuid.uuid4().hex[:6]}", "-n", "tenant-a", user="tenant-a")
    cluster.kubectl("create", "-n", "tenant-a", "-f", "-", user="tenant-a", stdin=pod("mine", 1, "leitstand"))
    assert bind(cluster, "tenant-a", "mine", "b200-0001", user="tenant-a") == 403
    assert (
        cluster.kubectl("auth", "can-i", "create", "pods/binding", user="leitstand-operator").stdout.strip()
        == "yes"
    )


def flow_schema_of(cluster: Cluster, path: str, user: str) -> str:
    """The UID of the FlowSchema kube-apiserver's API Priority and Fairness put a GET of `path` by
    `user` into (response header X-Kubernetes-PF-FlowSchema-UID), whatever the answer's status."""
    config = yaml.safe_load(cluster.kubeconfig(user).read_text())
    server = config["clusters"][0]["cluster"]["server"]
    token = config["users"][0]["user"]["token"]
    req = urllib.request.Request(f"{server}{path}", headers={"Authorization": f"Bearer {token}"})
    context = ssl.create_default_context(cafile=str(cluster.run / "pki" / "ca.crt"))
    try:
        with urllib.request.urlopen(req, context=context, timeout=10) as resp:
            return str(resp.headers.get("X-Kubernetes-PF-FlowSchema-UID", ""))
    except urllib.error.HTTPError as exc:
        exc.close()
        return str(exc.headers.get("X-Kubernetes-PF-FlowSchema-UID", ""))


def test_the_operators_lease_requests_go_to_the_leader_election_priority_level(cluster: Cluster) -> None:
    """deploy/rbac/operator.yaml's FlowSchema: the operator's Lease requests are not queued behind its
    own pod writes in kube-apiserver (a 1,250-node run lost the Lease when a renewal waited there);
    its other requests stay where they were."""
    schema = cluster.get_json("flowschema", "leitstand-leader-election")
    assert schema["spec"]["priorityLevelConfiguration"]["name"] == "leader-election"
    lease = "/apis/coordination.k8s.io/v1/namespaces/leitstand-system/leases/leitstand-scheduler"
    assert flow_schema_of(cluster, lease, "leitstand-operator") == schema["metadata"]["uid"]
    assert flow_schema_of(cluster, "/api/v1/pods?limit=1", "leitstand-operator") != schema["metadata"]["uid"]
    assert flow_schema_of(cluster, lease, "tenant-a") != schema["metadata"]["uid"]  # only the operator


def test_garbage_collector_and_namespace_deletion(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("create", "configmap", "owner", "-n", namespace)
    uid = cluster.get_json("configmap", "owner", "-n", namespace)["metadata"]["uid"]
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}],
        },
    }
    cluster.kubectl("create", "-n", namespace, "-f", "-", stdin=json.dumps(dependent))
    cluster.kubectl("delete", "configmap", "owner", "-n", namespace)
    wait_for(
        lambda: (
            cluster.kubectl("get", "configmap", "dependent", "-n", namespace, check=False).returncode != 0
        ),
        60,
        "the garbage collector to delete the dependent",
    )
    scratch = f"scratch-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", scratch)
    cluster.kubectl("delete", "namespace", scratch, "--timeout=60s")
    assert cluster.kubectl("get", "namespace", scratch, check=False).returncode != 0


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_down_leaves_nothing_and_up_works_again(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for _ in range(2):
        started = start_cluster(run, "--nodes", "2")
        pids = [p["pid"] for p in started.status["processes"].values()]
        ports = started.status["ports"]
        assert len(pids) == 4 and all(Path(f"/proc/{pid}").exists() for pid in pids)
        assert started.kubectl("get", "nodes").stdout.count(" Ready ") == 2
        down = cluster_cli(run, "down")
        assert down.returncode == 0, down.stderr
        for pid in pids:
            stat = Path(f"/proc/{pid}/stat")
            assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
        assert not any(_listening(port) for port in (ports["etcd"], ports["apiserver"]))
        assert not run.exists()
