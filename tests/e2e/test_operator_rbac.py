"""The chart's RBAC is proven sufficient, not assumed: every operator scenario of test_operator.py runs
again, with `leitstand run` authenticated as the Helm chart's ServiceAccount
(`leitstand-system/leitstand-operator`, a token from the TokenRequest API) instead of the local
cluster's static-token user — and the same ServiceAccount is shown to be denied what it must not do.

How: this module overrides `rack_cluster` for its own tests only. The override installs the chart into
the cluster (`helm install`, `replicas=0`: its RBAC and the rest, but no operator pods, which on KWOK
nodes could not run anyway), makes a kubeconfig from `kubectl create token leitstand-operator`, and
hands the scenarios a cluster whose `leitstand-operator` user is that kubeconfig. The scenarios and
their fixtures are test_operator.py's own objects, imported below, so both runs are the same code.
The ServiceAccount gets its rights only from the chart's ClusterRoleBinding (plus what every
authenticated user has), so a missing rule fails a scenario here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from . import test_operator
from .conftest import Cluster, service_account_kubeconfig
from .test_helm import NAMESPACE, Release, install_crds
from .test_operator import TENANTS, Leitstand, training_job

SERVICE_ACCOUNT = "leitstand-operator"
IDENTITY = f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"

# The scenarios and the fixtures they use (the module-scoped `leitstand`, the autouse `scenario`),
# taken over whole: collected here again, they resolve `rack_cluster` to the override below.
leitstand = test_operator.leitstand
scenario = test_operator.scenario
for _name, _test in vars(test_operator).items():  # in their order in test_operator.py
    if _name.startswith("test_"):
        globals()[_name] = _test


RELEASE: list[Release] = []
"""The chart's release in `rack_cluster` while this module runs (for the tests that read it)."""


@pytest.fixture(scope="module")
def rack_cluster(rack_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """`rack_cluster` with the chart installed and `leitstand-operator` acting as its ServiceAccount.
    Events of an earlier run on the same cluster (test_operator.py reuses the job names) are deleted
    first: the scenarios count a job's Events by its name."""
    folder = tmp_path_factory.mktemp("chart-sa")
    for namespace in (*TENANTS, NAMESPACE):
        rack_cluster.kubectl("delete", "events", "--all", "-n", namespace, "--ignore-not-found")
    install_crds(rack_cluster)
    release = Release(rack_cluster, folder / "helm")
    try:
        release.install("--set", "replicas=0")
        RELEASE.append(release)
        kubeconfig = service_account_kubeconfig(rack_cluster, NAMESPACE, SERVICE_ACCOUNT, folder / "sa.kubeconfig")
        whoami = rack_cluster.as_user("sa", kubeconfig).kubectl("auth", "whoami", "-o", "json", user="sa")
        assert json.loads(whoami.stdout)["status"]["userInfo"]["username"] == IDENTITY
        yield rack_cluster.as_user("leitstand-operator", kubeconfig)
    finally:
        RELEASE.clear()
        release.uninstall()


def test_leitstand_run_is_the_service_account_with_the_charts_role(leitstand: Leitstand) -> None:
    """The operator under test authenticates with the ServiceAccount's token (not the static user),
    leads, and the live role and binding are the release's (test_operator's fixture applies deploy/ too;
    the two are equal, tests/e2e/test_helm.py)."""
    kubeconfig = leitstand.cluster.kubeconfig("leitstand-operator")
    assert kubeconfig.name == "sa.kubeconfig"
    args = leitstand.operator.proc.args
    assert isinstance(args, list) and f"--kubeconfig={kubeconfig}" in args
    holder = leitstand.cluster.get_json("lease", "leitstand-scheduler", "-n", NAMESPACE)["spec"]["holderIdentity"]
    assert holder == "e2e-operator"
    [release] = RELEASE
    manifest = {(o["kind"], o["metadata"]["name"]): o for o in release.manifest()}
    role = leitstand.cluster.get_json("clusterrole", "leitstand:operator")
    assert role["rules"] == manifest[("ClusterRole", "leitstand:operator")]["rules"]
    assert role["metadata"]["annotations"]["meta.helm.sh/release-name"] == release.name
    binding = leitstand.cluster.get_json("clusterrolebinding", "leitstand:operator")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}]


CAN_I = [
    # (verb, resource[/subresource], namespace or "" for all namespaces / cluster scope, answer)
    ("get", "secrets", NAMESPACE, "no"),
    ("list", "secrets", "", "no"),
    ("delete", "nodes", "", "no"),
    ("patch", "nodes", "", "no"),
    ("update", "nodes/status", "", "no"),
    ("create", "trainingjobs.leitstand.dev", "tenant-a", "no"),
    ("delete", "trainingjobs.leitstand.dev", "tenant-a", "no"),
    ("create", "queues.leitstand.dev", "", "no"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", "", "no"),
    ("create", "serviceaccounts/token", NAMESPACE, "no"),
    ("create", "pods/exec", "tenant-a", "no"),
    ("update", "pods", "tenant-a", "no"),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io", "", "no"),
    ("get", "configmaps", NAMESPACE, "no"),
    # and what it needs, so the "no"s above are not an account that can do nothing
    ("create", "pods/binding", "tenant-a", "yes"),
    ("create", "pods/eviction", "tenant-a", "yes"),
    ("patch", "pods/status", "tenant-a", "yes"),
    ("update", "leases.coordination.k8s.io", NAMESPACE, "yes"),
    ("patch", "trainingjobs.leitstand.dev/status", "tenant-a", "yes"),
    ("create", "subjectaccessreviews.authorization.k8s.io", "", "yes"),
    ("create", "tokenreviews.authentication.k8s.io", "", "yes"),
]


def _can_i_id(verb: str, resource: str, answer: str) -> str:
    kind, _, subresource = resource.partition("/")
    return "-".join(part for part in (verb, kind.split(".")[0], subresource, answer) if part)


@pytest.mark.parametrize(("verb", "resource", "namespace", "answer"), CAN_I,
                         ids=[_can_i_id(v, r, a) for v, r, _, a in CAN_I])
def test_kubectl_auth_can_i_as_the_service_account(
    leitstand: Leitstand, verb: str, resource: str, namespace: str, answer: str
) -> None:
    scope = ["-n", namespace] if namespace else ["--all-namespaces"]
    # `can-i create pods/exec` would ask about a pod named "exec": a subresource goes in --subresource.
    kind, _, subresource = resource.partition("/")
    sub = [f"--subresource={subresource}"] if subresource else []
    proc = leitstand.cluster.kubectl("auth", "can-i", verb, kind, *sub, *scope, f"--as={IDENTITY}", check=False)
    assert proc.stdout.strip() == answer, f"can-i {verb} {resource}: {proc.stdout} {proc.stderr}"


def test_real_requests_it_must_not_make_are_forbidden(leitstand: Leitstand) -> None:
    """The same, as requests with the ServiceAccount's own token. Writes go with --dry-run=server:
    authorization runs before the dry-run, so a denial is the real answer, and a wrongly allowed write
    would change nothing."""
    sa = leitstand.cluster

    def denied(*args: str, stdin: str | None = None) -> str:
        proc = sa.kubectl(*args, user="leitstand-operator", stdin=stdin, check=False)
        assert proc.returncode != 0, f"kubectl {' '.join(args)} was allowed: {proc.stdout}"
        assert "forbidden" in proc.stderr.lower() and IDENTITY in proc.stderr, proc.stderr
        return proc.stderr

    denied("get", "secrets", "-n", NAMESPACE)
    denied("get", "secrets", "--all-namespaces")
    denied("delete", "node", "b200-0000", "--dry-run=server")
    denied("label", "node", "b200-0000", "leitstand.dev/e2e=touched", "--dry-run=server")
    denied("patch", "node", "b200-0000", "--subresource=status", "--type=merge", "--dry-run=server",
           "-p", '{"status":{"capacity":{"nvidia.com/gpu":"16"}}}')
    job = training_job("sa-made", namespace="tenant-a")
    message = denied("create", "-f", "-", "--dry-run=server", stdin=json.dumps(job))
    assert 'cannot create resource "trainingjobs" in API group "leitstand.dev"' in message
    denied("delete", "trainingjob", "sa-made", "-n", "tenant-a", "--dry-run=server")  # 403 before any 404
    denied("create", "token", SERVICE_ACCOUNT, "-n", NAMESPACE)
    denied("create", "clusterrolebinding", "escalate", "--clusterrole=cluster-admin",
           f"--serviceaccount={NAMESPACE}:{SERVICE_ACCOUNT}", "--dry-run=server")
    # Allowed reads still work with the same token (the denials are not a broken credential).
    nodes = sa.get_json("nodes", user="leitstand-operator")["items"]
    assert any(n["metadata"]["name"] == "b200-0000" for n in nodes)
