"""The API on a real kube-apiserver: `deploy/` installs, the examples apply as their tenants, bad objects
are rejected at `kubectl apply` with the field's path, and RBAC gives tenants and the operator what
docs/api.md says.

The install (namespace, CRDs, priority classes, RBAC) stays for the rest of the session (later tests may
rely on the CRDs); the objects this module creates are deleted at its end.
"""

from __future__ import annotations

import copy
import functools
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from leitstand.operator.cluster.layout import repo_root

from .conftest import Cluster

DEPLOY = repo_root() / "deploy"
EXAMPLES = DEPLOY / "examples"
INSTALL = [
    DEPLOY / "namespace.yaml",
    DEPLOY / "crds",
    DEPLOY / "priorityclasses.yaml",
    DEPLOY / "rbac",
]
LABEL = "leitstand.dev/e2e=crds"
"""Put on every object the tests create besides the examples, so teardown finds them."""


def wait_for(check: Callable[[], bool], timeout_seconds: float, what: str) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_seconds} s waiting for {what}")


def flat(text: str) -> str:
    """kubectl explain wraps at 80 columns; compare on single spaces."""
    return " ".join(text.split())


def docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def api(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster with Leitstand's API installed from deploy/ (as a platform engineer would)."""
    args = [arg for path in INSTALL for arg in ("-f", str(path))]
    cluster.kubectl("apply", *args)
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "crd/trainingjobs.leitstand.dev",
        "crd/queues.leitstand.dev",
        "--timeout=60s",
    )
    try:
        yield cluster
    finally:
        cluster.kubectl("delete", "trainingjobs", "-A", "-l", LABEL, "--wait=false", check=False)
        for path in sorted(EXAMPLES.glob("*.yaml")):
            cluster.kubectl("delete", "-f", str(path), "--ignore-not-found", "--wait=false", check=False)


@pytest.fixture(scope="module")
def examples(api: Cluster) -> Cluster:
    """Every example applied: the queues by the admin, each job by the tenant owning its namespace."""
    api.kubectl("apply", "-f", str(EXAMPLES / "queues.yaml"))
    for path in sorted(EXAMPLES.glob("*.yaml")):
        if path.name == "queues.yaml":
            continue
        [namespace] = {doc["metadata"]["namespace"] for doc in docs(path)}
        api.kubectl("apply", "-f", str(path), user=namespace)
    return api


def job(name: str, namespace: str = "tenant-a", **spec: Any) -> dict[str, Any]:
    """A valid TrainingJob; keyword arguments replace spec fields (None removes one)."""
    body: dict[str, Any] = {
        "queue": namespace,
        "gpus": 1,
        "template": {"spec": {"containers": [{"name": "main", "image": "registry.example/leitstand/train:latest"}]}},
    }
    for key, value in spec.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return {
        "apiVersion": "leitstand.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": namespace, "labels": {"leitstand.dev/e2e": "crds"}},
        "spec": body,
    }


def queue(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "leitstand.dev/v1alpha1",
        "kind": "Queue",
        "metadata": {"name": name, "labels": {"leitstand.dev/e2e": "crds"}},
        "spec": spec,
    }


def apply(cluster: Cluster, obj: dict[str, Any], user: str = "admin", check: bool = False) -> Any:
    return cluster.kubectl("apply", "-f", "-", user=user, stdin=json.dumps(obj), check=check)


def test_install_is_established_and_kustomize_renders_it(api: Cluster) -> None:
    for crd in ("trainingjobs.leitstand.dev", "queues.leitstand.dev"):
        conditions = api.get_json("crd", crd)["status"]["conditions"]
        assert {c["type"]: c["status"] for c in conditions}["Established"] == "True"
    classes = {c["metadata"]["name"]: c for c in api.get_json("priorityclasses")["items"]}
    assert classes["leitstand-train"]["value"] == 50 and classes["leitstand-inference"]["value"] == 125
    assert all(classes[n]["preemptionPolicy"] == "Never" for n in ("leitstand-train", "leitstand-build"))
    rendered = api.kubectl("apply", "-k", str(DEPLOY), "--dry-run=server", "-o", "name").stdout.split()
    assert {
        "namespace/leitstand-system",
        "customresourcedefinition.apiextensions.k8s.io/trainingjobs.leitstand.dev",
        "customresourcedefinition.apiextensions.k8s.io/queues.leitstand.dev",
        "priorityclass.scheduling.k8s.io/leitstand-train",
        "clusterrole.rbac.authorization.k8s.io/leitstand:operator",
        "clusterrolebinding.rbac.authorization.k8s.io/leitstand:queue-viewer",
    } <= set(rendered)


def test_every_example_applies_as_its_tenant(examples: Cluster) -> None:
    queues = {q["metadata"]["name"]: q for q in examples.get_json("queues")["items"]}
    assert {"research", "sme", "sme-vision", "sme-robotics", "industry", "tenant-a", "tenant-b"} <= set(queues)
    assert queues["sme"]["spec"]["gpu"] == {"quota": 24, "limit": 48, "overQuotaWeight": 1}  # default weight
    assert queues["research"]["spec"]["priority"] == 100  # default priority
    jobs = examples.get_json("trainingjobs", "-A")["items"]
    by_name = {j["metadata"]["name"]: j for j in jobs}
    expected = {
        doc["metadata"]["name"] for p in EXAMPLES.glob("*.yaml") for doc in docs(p) if doc["kind"] == "TrainingJob"
    }
    assert expected <= set(by_name)
    notebook = by_name["sme-robotics-notebook"]["spec"]
    assert notebook["replicas"] == 1 and notebook["backoffLimit"] == 0  # defaults filled in
    assert by_name["sme-vision-finetune"]["spec"]["priorityClassName"] == "leitstand-train"
    # A tenant cannot raise its own quota, and cannot submit into another tenant's namespace.
    [industry] = [q for q in docs(EXAMPLES / "queues.yaml") if q["metadata"]["name"] == "industry"]
    industry["spec"]["gpu"]["quota"] = 128
    denied = apply(examples, industry, user="industry")
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
    denied = examples.kubectl("apply", "-f", str(EXAMPLES / "research-pretrain.yaml"), user="industry", check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()


def test_kubectl_explain_shows_the_descriptions(api: Cluster) -> None:
    def explains(resource: str, *phrases: str) -> Callable[[], bool]:
        return lambda: all(p in flat(api.kubectl("explain", resource, check=False).stdout) for p in phrases)

    wait_for(
        explains(
            "trainingjob.spec.topology",
            "spine > rack > nvlink-domain > node",
            "A cluster with other levels edits this enum together with the operator's topology configuration.",
            "Hard constraint",
        ),
        60,
        "kubectl explain trainingjob.spec.topology",
    )
    wait_for(
        explains("queue.spec.gpu", "Unset means NO cap (unlike KAI, where an unset limit means 0)", "Deserved GPUs"),
        60,
        "kubectl explain queue.spec.gpu",
    )
    wait_for(explains("tj.spec", "Immutable once submitted"), 60, "kubectl explain tj.spec")


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(obj: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = obj
        for key in parents:
            node = node[key]
        node[last] = value

    return mutate


INVALID_JOBS = [
    # (case, spec changes, the field path the API server must name, a phrase of its message)
    ("gpus and gpuFraction", {"gpuFraction": 0.5}, "spec.gpuFraction", "not both"),
    ("neither gpus nor gpuFraction", {"gpus": None}, "spec.gpus", "set spec.gpus"),
    ("gpuFraction 1.5", {"gpus": None, "gpuFraction": 1.5}, "spec.gpuFraction", "less than 1"),
    ("gpuFraction 0", {"gpus": None, "gpuFraction": 0}, "spec.gpuFraction", "greater than 0"),
    ("gpuFraction below a thousandth", {"gpus": None, "gpuFraction": 0.0004}, "spec.gpuFraction", "at least 0.001"),
    ("gpuFraction rounding to a whole GPU", {"gpus": None, "gpuFraction": 0.9999}, "spec.gpuFraction", "at most 0.999"),
    ("replicas 2^31 - 1", {"replicas": 2**31 - 1}, "spec.replicas", "less than or equal to 100000"),
    ("replicas 0", {"replicas": 0}, "spec.replicas", "greater than or equal to 1"),
    ("negative gpus", {"gpus": -1}, "spec.gpus", "greater than or equal to 0"),
    ("negative backoffLimit", {"backoffLimit": -2}, "spec.backoffLimit", "greater than or equal to 0"),
    ("maxRuntimeSeconds 0", {"maxRuntimeSeconds": 0}, "spec.maxRuntimeSeconds", "greater than or equal to 1"),
    ("unknown topology level", {"topology": {"required": "zone"}}, "spec.topology.required", "Unsupported value"),
    ("missing queue", {"queue": None}, "spec.queue", "Required value"),
    (
        "no template containers",
        {"template": {"spec": {"containers": []}}},
        "spec.template.spec.containers",
        "at least 1",
    ),
    ("template without spec", {"template": {"metadata": {}}}, "spec.template.spec", "Required value"),
    ("missing template", {"template": None}, "spec.template", "Required value"),
    ("unknown field", {"gpu": 1}, "spec.gpu", "unknown field"),
]


def test_a_trainingjob_name_longer_than_a_label_value_is_rejected(api: Cluster) -> None:
    """The name labels every pod (leitstand.dev/job), so 64 characters would fail later, at pod creation."""
    proc = apply(api, job("n" * 64), user="tenant-a")
    assert proc.returncode != 0
    assert "metadata.name may have at most 63 characters" in proc.stderr, proc.stderr
    assert apply(api, job("n" * 63), user="tenant-a").returncode == 0
    api.kubectl("delete", "trainingjob", "-n", "tenant-a", "n" * 63, "--wait=false")


@pytest.mark.parametrize(("case", "changes", "field", "phrase"), INVALID_JOBS, ids=[c[0] for c in INVALID_JOBS])
def test_invalid_trainingjobs_are_rejected_naming_the_field(
    api: Cluster, case: str, changes: dict[str, Any], field: str, phrase: str
) -> None:
    proc = apply(api, job(f"bad-{uuid.uuid4().hex[:6]}", **changes), user="tenant-a")
    assert proc.returncode != 0, case
    assert field in proc.stderr and phrase in proc.stderr, proc.stderr


INVALID_QUEUES = [
    ("limit below quota", {"gpu": {"quota": 8, "limit": 4}}, "spec.gpu.limit", "at least gpu.quota"),
    ("negative quota", {"gpu": {"quota": -1}}, "spec.gpu.quota", "greater than or equal to 0"),
    ("negative weight", {"gpu": {"overQuotaWeight": -1}}, "spec.gpu.overQuotaWeight", "greater than or equal to 0"),
    ("parent is itself", {"parent": "SELF"}, "spec.parent", "not the queue itself"),
    ("model limit below its quota", {"gpu": {"quota": 8, "models": {"NVIDIA-B200": {"quota": 8, "limit": 4}}}},
     "spec.gpu.models[NVIDIA-B200].limit", "at least its quota"),
    ("negative model quota", {"gpu": {"models": {"NVIDIA-B200": {"quota": -1}}}}, "spec.gpu.models.NVIDIA-B200.quota",
     "greater than or equal to 0"),
]


@pytest.mark.parametrize(("case", "spec", "field", "phrase"), INVALID_QUEUES, ids=[c[0] for c in INVALID_QUEUES])
def test_invalid_queues_are_rejected_naming_the_field(
    api: Cluster, case: str, spec: dict[str, Any], field: str, phrase: str
) -> None:
    name = f"bad-{uuid.uuid4().hex[:6]}"
    body = json.loads(json.dumps(spec).replace("SELF", name))
    proc = apply(api, queue(name, **body))
    assert proc.returncode != 0, case
    assert field in proc.stderr and phrase in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "change",
    [
        _set("spec.gpus", 2),
        _set("spec.template.spec.containers", [{"name": "main", "image": "other:latest"}]),
        _set("spec.template.spec.nodeSelector", {"a": "b"}),  # a field the schema leaves open is covered too
    ],
    ids=["gpus", "image", "nodeSelector"],
)
def test_spec_is_immutable_but_labels_are_not(api: Cluster, change: Callable[[dict[str, Any]], None]) -> None:
    original = job(f"fixed-{uuid.uuid4().hex[:6]}")
    assert apply(api, original, user="tenant-a").returncode == 0
    changed = copy.deepcopy(original)
    change(changed)
    proc = apply(api, changed, user="tenant-a")
    assert proc.returncode != 0
    assert "spec: Invalid value" in proc.stderr
    assert "spec is immutable once submitted; delete and re-create the TrainingJob" in proc.stderr
    relabelled = copy.deepcopy(original)
    relabelled["metadata"]["labels"]["team"] = "vision"
    assert apply(api, relabelled, user="tenant-a").returncode == 0


def test_status_takes_exactly_the_documented_fields(api: Cluster) -> None:
    name = f"status-{uuid.uuid4().hex[:6]}"
    apply(api, job(name), user="tenant-a", check=True)
    status = {
        "phase": "Running",
        "reason": "Admitted",
        "message": "placed in rack rack-000",
        "conditions": [
            {
                "type": "Admitted",
                "status": "True",
                "reason": "Placed",
                "message": "1 replica on b200-0000",
                "lastTransitionTime": "2026-01-01T00:00:01Z",
                "observedGeneration": 1,
            }
        ],
        "queuedAt": "2026-01-01T00:00:00Z",
        "admittedAt": "2026-01-01T00:00:01Z",
        "startedAt": "2026-01-01T00:00:02Z",
        "restarts": 0,
        "preemptions": 0,
        "gpus": "1",
        "placement": {"nodes": ["b200-0000"], "nodeCount": 1, "domain": "rack-000", "level": "rack"},
    }
    patch = json.dumps({"status": {**status, "notInTheSchema": 1}})
    args = ("patch", "trainingjob", name, "-n", "tenant-a", "--subresource=status", "--type=merge", "-p")
    api.kubectl(*args, patch, user="leitstand-operator")
    assert api.get_json("trainingjob", name, "-n", "tenant-a")["status"] == status  # unknown field pruned
    bad = api.kubectl(*args, json.dumps({"status": {"phase": "Stuck"}}), user="leitstand-operator", check=False)
    assert bad.returncode != 0 and "status.phase" in bad.stderr
    # A tenant cannot write status.
    denied = api.kubectl(*args, json.dumps({"status": {"phase": "Succeeded"}}), user="tenant-a", check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()


def test_tenant_submits_in_its_namespace_only_and_reads_queues(api: Cluster) -> None:
    mine = job(f"mine-{uuid.uuid4().hex[:6]}")
    assert apply(api, mine, user="tenant-a").returncode == 0
    theirs = job(f"theirs-{uuid.uuid4().hex[:6]}", namespace="tenant-b")
    proc = apply(api, theirs, user="tenant-a")
    assert proc.returncode != 0 and "forbidden" in proc.stderr.lower()
    proc = api.kubectl("get", "trainingjobs", "-n", "tenant-b", user="tenant-a", check=False)
    assert proc.returncode != 0 and "forbidden" in proc.stderr.lower()
    api.kubectl("get", "queues", user="tenant-a")  # every authenticated user reads queues
    api.kubectl("get", "lsq", user="sme-robotics")
    proc = apply(api, queue(f"mine-{uuid.uuid4().hex[:6]}"), user="tenant-a")
    assert proc.returncode != 0 and "forbidden" in proc.stderr.lower()


def test_builtin_roles_aggregate_trainingjobs(api: Cluster) -> None:
    def grants(role: str, verb: str) -> bool:
        rules = api.get_json("clusterrole", role).get("rules") or []
        return any(
            "leitstand.dev" in r.get("apiGroups", [])
            and "trainingjobs" in r.get("resources", [])
            and verb in r["verbs"]
            for r in rules
        )

    for role, verb in (("edit", "create"), ("admin", "delete"), ("view", "list")):
        wait_for(functools.partial(grants, role, verb), 30, f"{role} to aggregate {verb} trainingjobs")
    assert not grants("view", "create")


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
        ("patch", "trainingjobs.leitstand.dev/status", "yes"),
        ("update", "queues.leitstand.dev/status", "yes"),
        ("watch", "trainingjobs.leitstand.dev", "yes"),
        ("create", "trainingjobs.leitstand.dev", "no"),
        ("delete", "queues.leitstand.dev", "no"),
        ("create", "pods/binding", "yes"),
        ("create", "pods/eviction", "yes"),
        ("update", "pods", "no"),
        ("create", "tokenreviews.authentication.k8s.io", "yes"),
        ("create", "subjectaccessreviews.authorization.k8s.io", "yes"),
        ("create", "leases.coordination.k8s.io", "yes"),
        ("list", "priorityclasses.scheduling.k8s.io", "yes"),
        ("list", "secrets", "no"),
    ],
)
def test_operator_rights(api: Cluster, verb: str, resource: str, allowed: str) -> None:
    proc = api.kubectl("auth", "can-i", verb, resource, "-A", user="leitstand-operator", check=False)
    assert proc.stdout.strip() == allowed, (verb, resource, proc.stdout, proc.stderr)


def test_printer_columns(examples: Cluster) -> None:
    out = examples.kubectl("get", "tj", "-n", "research", user="research").stdout
    header, row = out.splitlines()[:2]
    assert header.split() == ["NAME", "QUEUE", "REPLICAS", "GPUS", "PHASE", "REASON", "AGE"]
    assert row.split()[:3] == ["research-pretrain", "research", "4"]
    wide = examples.kubectl("get", "tj", "-n", "research", "-o", "wide", user="research").stdout
    assert wide.splitlines()[0].split()[-1] == "MESSAGE"
    out = examples.kubectl("get", "queues", user="tenant-b").stdout
    assert out.splitlines()[0].split() == [
        "NAME",
        "PARENT",
        "QUOTA",
        "LIMIT",
        "WEIGHT",
        "ALLOCATED",
        "FAIRSHARE",
        "PENDING",
        "AGE",
    ]
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert rows["sme"][1:4] == ["24", "48", "1"]  # no parent: the column is empty
    assert rows["sme-vision"][1:4] == ["sme", "16", "1"]
    both = examples.kubectl("get", "leitstand", "-A").stdout  # the category lists both kinds
    assert "trainingjob.leitstand.dev/research-pretrain" in both and "queue.leitstand.dev/industry" in both
