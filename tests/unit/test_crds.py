"""The API manifests in `deploy/` without a cluster: CRDs load and are complete, examples fit the schema.

What a real API server would reject, or what `kubectl explain` would show empty, is caught here first:
every spec/status property has a description, the printer columns point at fields that exist, the CEL
rules are in place, no number may go negative, status is a closed schema (the operator writes exactly
these fields), and every example in `deploy/examples/` only uses fields the schema knows, with values
its enums and bounds allow. The end-to-end twin (`tests/e2e/test_crds.py`) applies the same files to a
real kube-apiserver.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from leitstand.operator.cluster.layout import repo_root

DEPLOY = repo_root() / "deploy"
GROUP = "leitstand.dev"
VERSION = "v1alpha1"


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def crds() -> dict[str, dict[str, Any]]:
    """The CRDs of deploy/crds/ by kind."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "crds").glob("*.yaml")):
        for doc in load_all(path):
            assert doc["kind"] == "CustomResourceDefinition", path
            found[doc["spec"]["names"]["kind"]] = doc
    return found


def version(kind: str) -> dict[str, Any]:
    served: list[dict[str, Any]] = [v for v in crds()[kind]["spec"]["versions"] if v["name"] == VERSION]
    assert len(served) == 1
    return served[0]


def schema(kind: str) -> dict[str, Any]:
    root: dict[str, Any] = version(kind)["schema"]["openAPIV3Schema"]
    return root


def walk(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node below `node` (properties and array items), with its dotted path."""
    for name, child in node.get("properties", {}).items():
        yield f"{path}.{name}", child
        yield from walk(child, f"{path}.{name}")
    if "items" in node:
        yield f"{path}[]", node["items"]
        yield from walk(node["items"], f"{path}[]")


def rules(node: dict[str, Any]) -> list[dict[str, Any]]:
    return list(node.get("x-kubernetes-validations", []))


# --- the CRDs themselves


def test_two_crds_in_one_group_and_version() -> None:
    found = crds()
    assert set(found) == {"TrainingJob", "Queue"}
    tj, queue = found["TrainingJob"], found["Queue"]
    assert tj["metadata"]["name"] == "trainingjobs.leitstand.dev"
    assert queue["metadata"]["name"] == "queues.leitstand.dev"
    assert tj["spec"]["scope"] == "Namespaced" and queue["spec"]["scope"] == "Cluster"
    assert tj["spec"]["names"]["shortNames"] == ["tj"]
    assert "leitstand" in tj["spec"]["names"]["categories"] and "leitstand" in queue["spec"]["names"]["categories"]
    for crd in found.values():
        assert crd["spec"]["group"] == GROUP
        [only] = crd["spec"]["versions"]
        assert only["name"] == VERSION and only["served"] and only["storage"]
        assert only["subresources"] == {"status": {}}


def test_queue_short_name_does_not_shadow_builtins_or_other_schedulers() -> None:
    short = crds()["Queue"]["spec"]["names"]["shortNames"]
    # kubectl's built-in short names, Volcano's `q` and Kueue's `lq`/`cq`.
    taken = {"po", "svc", "no", "ns", "cm", "pv", "pvc", "rs", "rc", "ds", "sts", "deploy", "ep", "ev", "sa", "pc"}
    assert short and not set(short) & (taken | {"q", "lq", "cq"})


@pytest.mark.parametrize("kind", ["TrainingJob", "Queue"])
def test_every_property_has_a_description(kind: str) -> None:
    root = schema(kind)
    assert root.get("description")
    missing = [
        path
        for top in ("spec", "status")
        for path, node in [(top, root["properties"][top]), *walk(root["properties"][top], top)]
        if not str(node.get("description", "")).strip()
    ]
    assert missing == []


@pytest.mark.parametrize("kind", ["TrainingJob", "Queue"])
def test_status_is_closed_and_numbers_are_never_negative(kind: str) -> None:
    root = schema(kind)
    status = root["properties"]["status"]
    assert not any(
        node.get("x-kubernetes-preserve-unknown-fields") for _, node in [("status", status), *walk(status, "status")]
    )
    for top in ("spec", "status"):
        for path, node in walk(root["properties"][top], top):
            if node.get("type") in ("integer", "number"):
                assert node.get("minimum", -1) >= 0, f"{path} may go negative"


def test_trainingjob_spec_fields_defaults_and_enums() -> None:
    spec = schema("TrainingJob")["properties"]["spec"]
    props = spec["properties"]
    assert set(props) == {
        "queue",
        "replicas",
        "minReplicas",
        "gpus",
        "gpuFraction",
        "gpuModel",
        "topology",
        "priorityClassName",
        "preemptible",
        "dataResidency",
        "nodePool",
        "maxRuntimeSeconds",
        "backoffLimit",
        "template",
    }
    assert set(spec["required"]) == {"queue", "template"}
    assert props["replicas"]["minimum"] == 1 and props["replicas"]["default"] == 1
    assert props["minReplicas"]["minimum"] == 1 and "default" not in props["minReplicas"]  # unset: rigid
    assert props["gpus"]["minimum"] == 0
    fraction = props["gpuFraction"]
    assert (fraction["minimum"], fraction["maximum"]) == (0, 1)
    assert fraction["exclusiveMinimum"] is True and fraction["exclusiveMaximum"] is True
    rules = [r["rule"] for r in fraction["x-kubernetes-validations"]]  # GPUs are counted in thousandths
    assert rules == ["self >= 0.001", "self <= 0.999"]
    assert props["replicas"]["maximum"] == 100_000  # the core's MAX_GANG_REPLICAS
    assert any("size(self.metadata.name) <= 63" in r["rule"]
               for r in schema("TrainingJob")["x-kubernetes-validations"])
    levels = ["spine", "rack", "nvlink-domain", "node"]
    assert props["topology"]["properties"]["required"]["enum"] == levels
    assert props["topology"]["properties"]["preferred"]["enum"] == levels
    assert "edits this enum" in props["topology"]["description"]
    assert props["priorityClassName"]["default"] == "leitstand-train"
    assert props["backoffLimit"] == {**props["backoffLimit"], "minimum": 0, "default": 0}
    assert props["maxRuntimeSeconds"]["minimum"] == 1
    template = props["template"]
    assert template["type"] == "object" and template["x-kubernetes-preserve-unknown-fields"] is True
    containers = template["properties"]["spec"]["properties"]["containers"]
    assert template["properties"]["spec"]["required"] == ["containers"] and containers["minItems"] == 1


def test_trainingjob_status_fields() -> None:
    status = schema("TrainingJob")["properties"]["status"]["properties"]
    assert set(status) == {
        "phase",
        "reason",
        "message",
        "conditions",
        "queuedAt",
        "admittedAt",
        "startedAt",
        "finishedAt",
        "replicas",
        "restarts",
        "preemptions",
        "gpus",
        "placement",
    }
    assert status["phase"]["enum"] == ["Pending", "Running", "Succeeded", "Failed"]
    condition = status["conditions"]["items"]["properties"]
    assert set(condition) == {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"}
    assert condition["type"]["enum"] == ["Admitted", "Running", "Finished", "Preempted"]
    for stamp in ("queuedAt", "admittedAt", "startedAt", "finishedAt"):
        assert status[stamp]["format"] == "date-time"
    assert status["gpus"]["type"] == "string"
    placement = status["placement"]["properties"]
    assert set(placement) == {"nodes", "domain", "level", "nodeCount"}
    assert placement["nodes"]["maxItems"] >= 1 and "at most" in placement["nodes"]["description"]


def test_queue_spec_and_status_fields() -> None:
    root = schema("Queue")
    spec = root["properties"]["spec"]["properties"]
    assert set(spec) == {"parent", "priority", "gpu", "nodePool", "namespaces"}
    assert spec["priority"]["default"] == 100
    gpu = spec["gpu"]["properties"]
    assert set(gpu) == {"quota", "limit", "overQuotaWeight", "models"}
    models = gpu.pop("models")
    assert all(gpu[k]["type"] == "number" and gpu[k]["minimum"] == 0 for k in gpu)
    entry = models["additionalProperties"]  # per GPU model: the same three amounts (parse_queue reads them)
    assert set(entry["properties"]) == {"quota", "limit", "overQuotaWeight"}
    assert "limit must be at least its quota" in entry["x-kubernetes-validations"][0]["message"]
    assert gpu["overQuotaWeight"]["default"] == 1
    assert "NO cap" in gpu["limit"]["description"]
    assert "any namespace" in spec["namespaces"]["description"]
    status = root["properties"]["status"]["properties"]
    assert set(status) == {
        "fairShare",
        "allocated",
        "allocatedMilli",
        "pendingJobs",
        "pendingGPUs",
        "runningJobs",
        "usageGPUSeconds",
        "usageUpdatedAt",
        "conditions",
        "lastUpdated",
    }
    for amount in ("fairShare", "allocated", "pendingGPUs"):
        assert status[amount]["type"] == "string" and "{1,3}" in status[amount]["pattern"]


def test_cel_rules() -> None:
    tj_spec = schema("TrainingJob")["properties"]["spec"]
    by_rule = {r["rule"]: r for r in rules(tj_spec)}
    immutable = by_rule["self == oldSelf"]
    assert immutable["message"] == "spec is immutable once submitted; delete and re-create the TrainingJob"
    [both] = [r for r in rules(tj_spec) if "&&" in r["rule"]]
    assert "gpus" in both["rule"] and "gpuFraction" in both["rule"]
    assert "spec.gpus" in both["message"] and "spec.gpuFraction" in both["message"] and "remove" in both["message"]
    assert "immutable" in tj_spec["description"].lower()

    queue = schema("Queue")
    [limit] = rules(queue["properties"]["spec"]["properties"]["gpu"])
    assert "self.limit >= self.quota" in limit["rule"] and limit["fieldPath"] == ".limit"
    [parent] = rules(queue)
    assert "self.spec.parent != self.metadata.name" in parent["rule"] and parent["fieldPath"] == ".spec.parent"


def resolves(root: dict[str, Any], json_path: str) -> bool:
    node = root
    for part in json_path.lstrip(".").split("."):
        if part == "metadata" and node is root:
            return True
        node = node.get("properties", {}).get(part, {})
        if not node:
            return False
    return True


@pytest.mark.parametrize(
    ("kind", "columns"),
    [
        ("TrainingJob", ["Queue", "Replicas", "GPUs", "Phase", "Reason", "Age"]),
        ("Queue", ["Parent", "Quota", "Limit", "Weight", "Allocated", "FairShare", "Pending", "Age"]),
    ],
)
def test_printer_columns(kind: str, columns: list[str]) -> None:
    printed = version(kind)["additionalPrinterColumns"]
    default = [c["name"] for c in printed if c.get("priority", 0) == 0]
    assert default == columns
    for column in printed:
        assert resolves(schema(kind), column["jsonPath"]), column


# --- examples against the schema


def violations(value: Any, node: dict[str, Any], path: str) -> Iterator[str]:
    """What an API server's structural schema would reject (unknown fields, types, enums, bounds, required)."""
    kind = node.get("type")
    if "enum" in node and value not in node["enum"]:
        yield f"{path}: {value!r} not in {node['enum']}"
    if kind == "object":
        if not isinstance(value, dict):
            yield f"{path}: not an object"
            return
        for name in node.get("required", []):
            if name not in value:
                yield f"{path}.{name}: required"
        props = node.get("properties", {})
        for name, child in value.items():
            if name in props:
                yield from violations(child, props[name], f"{path}.{name}")
            elif not node.get("x-kubernetes-preserve-unknown-fields"):
                yield f"{path}.{name}: unknown field"
    elif kind == "array":
        if not isinstance(value, list):
            yield f"{path}: not a list"
            return
        if len(value) < node.get("minItems", 0):
            yield f"{path}: fewer than {node['minItems']} items"
        for i, item in enumerate(value):
            yield from violations(item, node.get("items", {}), f"{path}[{i}]")
    elif kind in ("integer", "number"):
        if isinstance(value, bool) or not isinstance(value, int if kind == "integer" else (int, float)):
            yield f"{path}: not a {kind}"
            return
        low, high = node.get("minimum"), node.get("maximum")
        if low is not None and (value <= low if node.get("exclusiveMinimum") else value < low):
            yield f"{path}: below minimum {low}"
        if high is not None and (value >= high if node.get("exclusiveMaximum") else value > high):
            yield f"{path}: above maximum {high}"
    elif kind == "string" and not isinstance(value, str):
        yield f"{path}: not a string"
    elif kind == "boolean" and not isinstance(value, bool):
        yield f"{path}: not a boolean"


def examples() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, doc) for path in sorted((DEPLOY / "examples").glob("*.yaml")) for doc in load_all(path)]


def test_examples_use_only_fields_of_the_schema() -> None:
    found = examples()
    assert {doc["kind"] for _, doc in found} == {"TrainingJob", "Queue"}
    for name, doc in found:
        assert doc["apiVersion"] == f"{GROUP}/{VERSION}", name
        root = schema(doc["kind"])
        body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
        assert list(violations(body, {**root, "required": []}, doc["metadata"]["name"])) == []


def test_example_jobs_are_consistent_with_the_example_queues() -> None:
    queues = {doc["metadata"]["name"]: doc["spec"] for _, doc in examples() if doc["kind"] == "Queue"}
    parents = {spec.get("parent") for spec in queues.values()}
    assert parents - {None} <= set(queues)
    jobs = [(name, doc) for name, doc in examples() if doc["kind"] == "TrainingJob"]
    assert {name for name, _ in jobs} >= {
        "research-pretrain.yaml",
        "sme-vision-finetune.yaml",
        "sme-robotics-notebook.yaml",
        "industry-train.yaml",
        "industry-sovereign.yaml",
    }
    for name, job in jobs:
        spec, namespace = job["spec"], job["metadata"]["namespace"]
        assert ("gpus" in spec) != ("gpuFraction" in spec), name  # the CEL rule, checked here too
        assert spec["queue"] in queues and spec["queue"] not in parents, name  # an existing leaf
        assert namespace in queues[spec["queue"]]["namespaces"], name
        template = spec["template"]
        assert len(template["spec"]["containers"]) == 1, name
        # simulated pods end after this (deploy/kwok/), so the demo and the e2e tests run to the end
        assert template["metadata"]["annotations"]["leitstand.dev/sim-duration"].endswith("s"), name
    research = queues["research"]
    assert research["gpu"]["quota"] == 32 and research["nodePool"] == "research"
    assert queues["sme"]["gpu"] == {"quota": 24, "limit": 48}
    assert {queues[q]["parent"] for q in ("sme-vision", "sme-robotics")} == {"sme"}
    assert queues["industry"]["gpu"] == {"quota": 24, "overQuotaWeight": 2}
    assert queues["tenant-a"]["gpu"]["quota"] == queues["tenant-b"]["gpu"]["quota"] == 16


# --- priority classes, RBAC, kustomization


def test_priority_classes_and_their_preemptibility() -> None:
    classes = {doc["metadata"]["name"]: doc for doc in load_all(DEPLOY / "priorityclasses.yaml")}
    assert {name: c["value"] for name, c in classes.items()} == {
        "leitstand-train": 50,
        "leitstand-build": 100,
        "leitstand-inference": 125,
    }
    for c in classes.values():
        assert c["apiVersion"] == "scheduling.k8s.io/v1" and c["preemptionPolicy"] == "Never"
        assert c["description"] and not c["globalDefault"]
        annotated = c["metadata"]["annotations"]["leitstand.dev/preemptible"]
        assert annotated == ("true" if c["value"] < 100 else "false")  # agrees with the default rule


def rbac() -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (doc["kind"], doc["metadata"]["name"]): doc
        for path in sorted((DEPLOY / "rbac").glob("*.yaml"))
        for doc in load_all(path)
    }


def granted(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_operator_role_is_exactly_what_the_operator_needs() -> None:
    role = rbac()[("ClusterRole", "leitstand:operator")]
    rights = granted(role)
    assert not any("*" in right for right in rights)
    expected = {
        *(("", "pods", v) for v in ("get", "list", "watch", "create", "delete", "patch")),
        ("", "pods/binding", "create"),
        ("", "pods/eviction", "create"),
        ("", "pods/status", "get"),
        ("", "pods/status", "patch"),
        *(("", r, v) for r in ("nodes", "namespaces") for v in ("get", "list", "watch")),
        *(("scheduling.k8s.io", "priorityclasses", v) for v in ("get", "list", "watch")),
        *((g, "events", v) for g in ("", "events.k8s.io") for v in ("create", "patch")),
        *(("coordination.k8s.io", "leases", v) for v in ("get", "list", "watch", "create", "update", "patch")),
        *(("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("get", "list", "watch")),
        *((GROUP, r, v) for r in ("trainingjobs", "queues") for v in ("get", "list", "watch", "patch", "update")),
        *((GROUP, r, v) for r in ("trainingjobs/status", "queues/status") for v in ("get", "patch", "update")),
        ("authentication.k8s.io", "tokenreviews", "create"),
        ("authorization.k8s.io", "subjectaccessreviews", "create"),
    }
    assert rights == expected


def test_tenant_roles_aggregate_into_builtin_roles() -> None:
    objects = rbac()
    edit = objects[("ClusterRole", "leitstand:trainingjobs-edit")]
    labels = edit["metadata"]["labels"]
    assert labels["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert labels["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert {(r, v) for _, r, v in granted(edit)} >= {
        ("trainingjobs", v) for v in ("create", "update", "delete", "get", "list", "watch")
    }
    view = objects[("ClusterRole", "leitstand:trainingjobs-view")]
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert granted(view) == {(GROUP, "trainingjobs", v) for v in ("get", "list", "watch")}
    assert granted(objects[("ClusterRole", "leitstand:queue-viewer")]) == {
        (GROUP, "queues", v) for v in ("get", "list", "watch")
    }
    binding = objects[("ClusterRoleBinding", "leitstand:queue-viewer")]
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:authenticated"}
    ]


def test_kustomization_lists_the_install_but_not_the_examples() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    resources = kustomization["resources"]
    assert all((DEPLOY / r).is_file() for r in resources)
    assert set(resources) == {
        "namespace.yaml",
        "priorityclasses.yaml",
        "operator.yaml",  # the chart's defaults (tests/e2e/test_helm.py)
        *(f"crds/{p.name}" for p in (DEPLOY / "crds").glob("*.yaml")),
        *(f"rbac/{p.name}" for p in (DEPLOY / "rbac").glob("*.yaml")),
    }
    namespace = load_all(DEPLOY / "namespace.yaml")
    assert [(d["kind"], d["metadata"]["name"]) for d in namespace] == [("Namespace", "leitstand-system")]
