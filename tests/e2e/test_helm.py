"""The Helm chart (charts/leitstand/) proven with helm built from its Go module and the local cluster:
lint, the rendered defaults equal to `kubectl kustomize deploy/` object by object, a wrong value
stopped by values.schema.json naming the field, a server-side dry-run of everything it renders, and
`helm install` / `helm upgrade` / `helm uninstall` into the cluster.

What cannot be shown here: the operator's pods running. The local cluster's nodes are KWOK's, where no
container ever runs (a pod only looks Running), so the chart keeps the operator off them (node affinity
`type NotIn [kwok]`) and its pods stay Pending, as these tests check. The install test is therefore
the equivalent of `helm test`: every object of the release exists and the live Deployment is the one
the chart means. The operator itself runs on this machine as the chart's ServiceAccount in
test_operator_rbac.py.

The local cluster creates deploy/'s RBAC at `up`, and other tests apply the priority classes and sample
queues, so `Release.install` takes those over (`helm install --take-ownership`, the way from
`kubectl apply -k deploy/` to Helm, docs/install.md) and `uninstall` puts them back as they were, for
the tests that run after.
"""

from __future__ import annotations

import copy
import functools
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from leitstand.operator.cluster import helm
from leitstand.operator.service.config import ServiceConfig

from .conftest import Cluster, kubectl_binary
from .test_operator import condition, poll

CHART = helm.chart_dir()
NAMESPACE = helm.RELEASE_NAMESPACE
RELEASE = "leitstand"
OPTIONAL_ON = ("--set", "sampleQueues=true", "--set", "serviceMonitor.enabled=true",
               "--set", "queues[0].name=team-x", "--set", "queues[0].spec.gpu.quota=4")
"""Every optional part of the chart switched on."""


@pytest.fixture(scope="module")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """helm's config/cache/data folder for this module (never ~/.config/helm); helm built if missing."""
    helm.ensure_helm()
    return tmp_path_factory.mktemp("helm-home")


def key(obj: dict[str, Any]) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def comparable(obj: dict[str, Any]) -> dict[str, Any]:
    """An object without Helm's release labels (an emptied `labels` dropped)."""
    obj = helm.without_release_labels(obj)
    if obj["metadata"].get("labels") == {}:
        del obj["metadata"]["labels"]
    return obj


def as_list(objects: list[dict[str, Any]]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})


# -- without a cluster ----------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [(), OPTIONAL_ON], ids=["defaults", "everything-on"])
def test_helm_lint_passes(helm_home: Path, extra: tuple[str, ...]) -> None:
    proc = helm.run_helm("lint", str(CHART), "--strict", *extra, home=helm_home)
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout, proc.stdout


def test_the_rendered_defaults_are_deploy_object_for_object(helm_home: Path) -> None:
    """`helm template --include-crds` with the defaults = `kubectl kustomize deploy/` for every object both
    have (after Helm's release labels); deploy/ alone has the Namespace (Helm: `--create-namespace`)."""
    chart = {key(o): comparable(o) for o in helm.render("--include-crds", "--skip-tests", home=helm_home)}
    kustomized = subprocess.run([kubectl_binary(), "kustomize", str(helm.deploy_dir())], capture_output=True,
                                text=True, check=True).stdout
    deploy = {key(o): o for o in yaml.safe_load_all(kustomized) if o}
    assert set(deploy) - set(chart) == {("Namespace", "", NAMESPACE)}
    assert set(chart) - set(deploy) == set()
    for k in sorted(chart):
        assert chart[k] == deploy[k], f"{k} differs between the chart and deploy/"
    kinds = {k[0] for k in chart}
    assert kinds == {"CustomResourceDefinition", "PriorityClass", "ClusterRole", "ClusterRoleBinding",
                     "ServiceAccount", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget", "FlowSchema"}
    assert helm.chart_drift(helm_home) == []  # deploy/operator.yaml is what the chart renders now


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("replicas=two", "at '/replicas': got string, want integer"),
        ("replica=3", "additional properties 'replica' not allowed"),
        ("config.scheduler.min_runtime_seconds=-5", "at '/config/scheduler/min_runtime_seconds': minimum: got -5"),
        ("config.topology[0].lable=rack", "at '/config/topology/0': additional properties 'lable' not allowed"),
        ("config.system_namespace=elsewhere", "at '/config': additional properties 'system_namespace' not allowed"),
        ("config.api.host=127.0.0.1", "at '/config/api': additional properties 'host' not allowed"),
        ("image.pullPolicy=Sometimes", "at '/image/pullPolicy': value must be one of"),
        ("logFormat=xml", "at '/logFormat': value must be one of 'json', 'text'"),
        ("podDisruptionBudget.minAvailable=2", "podDisruptionBudget.minAvailable (2) must be below replicas (2)"),
        ("config.api.port=0", "config.api.port: must be a fixed port"),
    ],
)
def test_a_wrong_value_fails_naming_the_field(helm_home: Path, setting: str, message: str) -> None:
    proc = helm.run_helm("template", RELEASE, str(CHART), "--set", setting, home=helm_home, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


# -- against the cluster ---------------------------------------------------------------------------------


@dataclass
class Release:
    """A release of the chart in `cluster`, installed over what deploy/ (or a test) already created."""

    cluster: Cluster
    home: Path
    name: str = RELEASE
    adopted: list[dict[str, Any]] = field(default_factory=list)
    """Objects that existed before the install, as they were (restored by `uninstall`)."""

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return helm.run_helm(*args, home=self.home, kubeconfig=self.cluster.kubeconfig("admin"), check=check)

    def install(self, *values: str) -> subprocess.CompletedProcess[str]:
        """`helm install --take-ownership`: objects that exist already become the release's and are
        updated to the chart's content (Helm >= 3.17); they are remembered as they were for `uninstall`."""
        for obj in helm.render(*values, home=self.home):
            live = self.cluster.kubectl("get", "-f", "-", "-o", "json", stdin=json.dumps(obj), check=False)
            if live.returncode == 0:
                found = json.loads(live.stdout)  # `get -f` answers with a List
                self.adopted.extend(found["items"] if found.get("kind") == "List" else [found])
        return self.helm("install", self.name, str(CHART), "-n", NAMESPACE, "--create-namespace",
                         "--take-ownership", *values)

    def manifest(self) -> list[dict[str, Any]]:
        text = self.helm("get", "manifest", self.name, "-n", NAMESPACE).stdout
        return [doc for doc in yaml.safe_load_all(text) if doc]

    def uninstall(self) -> None:
        self.helm("uninstall", self.name, "-n", NAMESPACE, "--wait", "--timeout=60s", check=False)
        if self.adopted:
            self.cluster.kubectl("apply", "-f", "-", stdin=as_list([_restorable(o) for o in self.adopted]))


def _restorable(obj: dict[str, Any]) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj.pop("status", None)
    meta = obj["metadata"]
    for name in ("resourceVersion", "uid", "creationTimestamp", "managedFields", "generation"):
        meta.pop(name, None)
    annotations = meta.get("annotations") or {}
    for name in ("meta.helm.sh/release-name", "meta.helm.sh/release-namespace",
                 "kubectl.kubernetes.io/last-applied-configuration"):
        annotations.pop(name, None)
    labels = meta.get("labels") or {}
    if labels.get("app.kubernetes.io/managed-by") == "Helm":
        labels.pop("app.kubernetes.io/managed-by")
    return obj


def install_crds(cluster: Cluster) -> None:
    """The chart's crds/ (what `helm install` creates first), applied and awaited Established."""
    cluster.kubectl("apply", "-f", str(CHART / "crds"))
    # kubectl wait fails at once ("status.conditions accessor error") while a just-applied CRD has no
    # status yet, which a loaded API server shows for a moment: ask again until it answers.
    deadline = time.monotonic() + 60
    while True:
        proc = cluster.kubectl("wait", "--for=condition=Established", "crd/trainingjobs.leitstand.dev",
                               "crd/queues.leitstand.dev", "--timeout=60s", check=False)
        if proc.returncode == 0:
            return
        assert "accessor error" in proc.stderr and time.monotonic() < deadline, proc.stderr
        time.sleep(0.5)


def test_the_rendered_manifests_pass_a_server_side_dry_run(cluster: Cluster, helm_home: Path) -> None:
    """Everything the chart can render (optional parts on, the `helm test` pod included) is accepted by
    the API server's validation and admission (`--dry-run=server`: nothing is stored). The
    ServiceMonitor is left out unless the cluster serves monitoring.coreos.com (ours does not)."""
    install_crds(cluster)
    rendered = helm.render(*OPTIONAL_ON, home=helm_home)
    has_monitoring = cluster.kubectl("api-resources", "--api-group=monitoring.coreos.com", "-o", "name").stdout.strip()
    objects = [o for o in rendered if has_monitoring or o["kind"] != "ServiceMonitor"]
    assert len(objects) >= len(rendered) - 1
    proc = cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=as_list(objects))
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == len(objects) and all(line.endswith("(server dry run)") for line in lines), proc.stdout


def test_the_pods_meet_the_restricted_pod_security_standard(cluster: Cluster, helm_home: Path) -> None:
    """The operator's pod and the `helm test` pod are admitted by Pod Security admission in a namespace
    that enforces `restricted` (non-root, no privilege escalation, no capabilities, seccomp, plain
    volumes). Created with --dry-run=server in a scratch namespace: admission runs, nothing is stored."""
    namespace = "leitstand-pss-check"
    cluster.kubectl("create", "namespace", namespace)
    try:
        cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
                        "pod-security.kubernetes.io/enforce-version=latest")
        rendered = helm.render(home=helm_home)
        [deployment] = [o for o in rendered if o["kind"] == "Deployment"]
        [test_pod] = [o for o in rendered if o["kind"] == "Pod"]
        operator_spec = dict(deployment["spec"]["template"]["spec"])
        operator_spec.pop("serviceAccountName")  # exists in the release namespace only
        for name, spec in (("operator", operator_spec), ("helm-test", test_pod["spec"])):
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace}, "spec": spec}
            proc = cluster.kubectl("create", "--dry-run=server", "-f", "-", stdin=json.dumps(pod), check=False)
            assert proc.returncode == 0 and not proc.stderr.strip(), f"{name}: {proc.stderr}"
        insecure = {**operator_spec, "securityContext": {}}
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", "namespace": namespace}, "spec": insecure}
        proc = cluster.kubectl("create", "--dry-run=server", "-f", "-", stdin=json.dumps(pod), check=False)
        assert proc.returncode != 0 and 'violates PodSecurity "restricted:latest"' in proc.stderr, proc.stderr
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false")


@pytest.fixture(scope="module")
def release(cluster: Cluster, helm_home: Path) -> Iterator[Release]:
    install_crds(cluster)
    installed = Release(cluster, helm_home)
    try:
        installed.install("--set", "sampleQueues=true")
        yield installed
    finally:
        installed.uninstall()


def test_install_creates_every_object_and_the_deployment_the_chart_means(release: Release) -> None:
    cluster = release.cluster
    status = json.loads(release.helm("status", RELEASE, "-n", NAMESPACE, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed" and status["version"] == 1
    manifest = release.manifest()
    for obj in manifest:  # what `helm test` would check: every object of the release exists
        cluster.kubectl("get", "-f", "-", stdin=json.dumps(obj))
    kinds = {o["kind"] for o in manifest}
    assert {"PriorityClass", "ClusterRole", "ClusterRoleBinding", "ServiceAccount", "ConfigMap", "Service",
            "Deployment", "PodDisruptionBudget", "Queue"} <= kinds
    queues = {q["metadata"]["name"] for q in cluster.get_json("queues")["items"]}
    assert {"research", "sme", "sme-vision", "sme-robotics", "industry"} <= queues

    deployment = cluster.get_json("deployment", "leitstand", "-n", NAMESPACE)
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    assert spec["replicas"] == 2 and pod["serviceAccountName"] == "leitstand-operator"
    assert container["image"] == "leitstand:0.1.0"
    assert container["args"] == ["--config=/etc/leitstand/config.yaml", "--identity=$(POD_NAME)", "--log-format=json"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True and pod["securityContext"]["runAsNonRoot"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert mounts[env["NUMBA_CACHE_DIR"]] == "numba-cache" and "/tmp" in mounts
    assert {v["name"]: "emptyDir" in v for v in pod["volumes"]} == {"config": False, "numba-cache": True, "tmp": True}

    # The configuration is one `leitstand run` accepts, with the chart's namespace and API address.
    configmap = cluster.get_json("configmap", "leitstand-config", "-n", NAMESPACE)
    config = ServiceConfig.model_validate(yaml.safe_load(configmap["data"]["config.yaml"]))
    assert config.system_namespace == NAMESPACE and config.api.host == "0.0.0.0" and config.api.port == 8080
    service = cluster.get_json("service", "leitstand", "-n", NAMESPACE)
    assert service["spec"]["ports"][0]["port"] == 8080
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]

    # The pods exist; on a cluster of simulated nodes only, none is placed (nothing could run it), and
    # kube-scheduler, where it runs, says the node affinity keeps it off them.
    pods = poll(functools.partial(operator_pods, cluster, 2), "the Deployment's 2 pods", 30)
    if all(n["metadata"]["labels"].get("type") == "kwok" for n in cluster.get_json("nodes")["items"]):
        assert not any(p["spec"].get("nodeName") for p in pods), "an operator pod was placed on a simulated node"
        if "kube-scheduler" in cluster.status.get("processes", {}):
            for name in (p["metadata"]["name"] for p in pods):
                waiting = poll(functools.partial(unscheduled, cluster, name), f"{name} unschedulable", 30)
                assert "didn't match Pod's node affinity/selector" in waiting, waiting


def operator_pods(cluster: Cluster, count: int) -> list[dict[str, Any]] | None:
    selector = "app.kubernetes.io/name=leitstand,app.kubernetes.io/component=operator"
    pods: list[dict[str, Any]] = cluster.get_json("pods", "-n", NAMESPACE, "-l", selector)["items"]
    return pods if len(pods) == count else None


def unscheduled(cluster: Cluster, pod: str) -> str | None:
    """The PodScheduled message of a pod kube-scheduler could not place, or None (not yet tried)."""
    status = cluster.get_json("pod", pod, "-n", NAMESPACE).get("status") or {}
    scheduled = condition(status, "PodScheduled")
    return str(scheduled["message"]) if scheduled.get("reason") == "Unschedulable" else None


def test_a_wrong_value_fails_the_install_and_creates_nothing(release: Release) -> None:
    proc = release.helm("install", "leitstand-wrong", str(CHART), "-n", NAMESPACE, "--set", "replicas=-1",
                        "--set", "config.scheduler.policy=7", check=False)
    assert proc.returncode != 0
    assert "at '/replicas': minimum: got -1, want 0" in proc.stderr, proc.stderr
    assert "at '/config/scheduler/policy': got number, want string" in proc.stderr, proc.stderr
    releases = json.loads(release.helm("list", "-n", NAMESPACE, "-a", "-o", "json").stdout)
    assert [r["name"] for r in releases] == [RELEASE]


def test_upgrade_with_a_changed_value_rolls_out_the_new_configuration(release: Release) -> None:
    cluster = release.cluster
    before = cluster.get_json("deployment", "leitstand", "-n", NAMESPACE)["spec"]["template"]["metadata"]
    release.helm("upgrade", RELEASE, str(CHART), "-n", NAMESPACE, "--reuse-values",
                 "--set", "replicas=3", "--set", "config.scheduler.min_runtime_seconds=30")
    status = json.loads(release.helm("status", RELEASE, "-n", NAMESPACE, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed" and status["version"] == 2
    assert json.loads(release.helm("get", "values", RELEASE, "-n", NAMESPACE, "-o", "json").stdout) == {
        "sampleQueues": True, "replicas": 3, "config": {"scheduler": {"min_runtime_seconds": 30}}}
    deployment = cluster.get_json("deployment", "leitstand", "-n", NAMESPACE)
    assert deployment["spec"]["replicas"] == 3
    after = deployment["spec"]["template"]["metadata"]
    assert after["annotations"]["checksum/config"] != before["annotations"]["checksum/config"]
    config = yaml.safe_load(cluster.get_json("configmap", "leitstand-config", "-n", NAMESPACE)["data"]["config.yaml"])
    assert config["scheduler"]["min_runtime_seconds"] == 30 and config["scheduler"]["max_victims"] == 64
    assert cluster.get_json("pdb", "leitstand", "-n", NAMESPACE)["spec"]["minAvailable"] == 1
