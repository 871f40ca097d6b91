"""End-to-end fixtures: one local cluster (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
KWOK) for the whole test session, started through the real CLI and stopped by its recorded PIDs.

Every test here is marked `e2e`, so `pytest -m "not e2e"` runs the fast tier without binaries. The
cluster gets its own run folder under pytest's tmp dir (so a developer's own cluster is untouched) and
free loopback ports; the binaries come from the shared cache (`leitstand cluster build`, run by `up`
if missing).

Any cluster, not only ours: with `LEITSTAND_E2E_KUBECONFIG=<an admin kubeconfig>` the `cluster` and
`rack_cluster` fixtures start nothing and yield that cluster instead (`external_cluster`): the
identities the tests act as (admin, `leitstand-operator`, the tenants) become ServiceAccounts with
tokens from the TokenRequest API, bound like the local cluster's static users, and a kubeconfig is
written for each. The cluster must already have the simulated nodes the tests expect and a KWOK
controller driving them (docs/install.md, "Running the e2e tests against your cluster").
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

CLI = [sys.executable, "-c", "from leitstand.operator.cluster.commands import app; app()"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: needs the local cluster (leitstand cluster build); run with -m e2e"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


PHASE_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
"""Each test's reports by phase ("setup", "call", "teardown"), so a fixture can tell that its test failed
(and print the operator's log then)."""


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(PHASE_REPORTS, {})[report.when] = report
    return report


def cluster_cli(run: Path, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LEITSTAND_RUN": str(run)}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout)


LEITSTAND_CLI = [sys.executable, "-c", "from leitstand.operator.cli import main; main()"]

own_cluster = pytest.mark.skipif(bool(os.environ.get("LEITSTAND_E2E_KUBECONFIG")),
                                 reason="starts a cluster of its own (a benchmark's smoke run)")
"""For a test that runs a `leitstand bench` command on a cluster the command starts itself."""


def bench_json(tmp_path: Path, *args: str, timeout: float = 900) -> dict[str, Any]:
    """`leitstand bench <args> --log-dir <tmp> --json` in a run folder of its own, which starts its own
    cluster; the report, after checking it exited 0 and stopped what it started (`down` removed it)."""
    run = tmp_path / "run"
    proc = subprocess.run([*LEITSTAND_CLI, "bench", *args, "--log-dir", str(tmp_path), "--json"],
                          env={**os.environ, "LEITSTAND_RUN": str(run)}, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not run.exists() or not (run / "state.json").exists(), "the cluster it started is still there"
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


@dataclass(frozen=True)
class Cluster:
    run: Path
    kubectl_path: str
    status: dict[str, Any]
    kubeconfigs: tuple[tuple[str, Path], ...] = ()
    """Users whose kubeconfig is not `<run>/<user>.kubeconfig` (see `as_user`)."""
    external: bool = False
    """Given by LEITSTAND_E2E_KUBECONFIG: started and stopped by someone else."""

    def kubeconfig(self, user: str = "admin") -> Path:
        return dict(self.kubeconfigs).get(user, self.run / f"{user}.kubeconfig")

    def as_user(self, user: str, kubeconfig: Path) -> Cluster:
        """The same cluster, with `user` acting through `kubeconfig` (e.g. `leitstand-operator` as the
        Helm chart's ServiceAccount instead of the local cluster's static-token user)."""
        others = tuple(u for u in self.kubeconfigs if u[0] != user)
        return dataclasses.replace(self, kubeconfigs=(*others, (user, kubeconfig)))

    def kubectl(
        self, *args: str, user: str = "admin", check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.kubectl_path, f"--kubeconfig={self.kubeconfig(user)}", *args],
            capture_output=True,
            text=True,
            input=stdin,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr}")
        return proc

    def get_json(self, *args: str, user: str = "admin") -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json", user=user).stdout)


def start_cluster(run: Path, *up_args: str) -> Cluster:
    proc = cluster_cli(run, "up", *up_args)
    if proc.returncode != 0:
        raise RuntimeError(f"leitstand cluster up failed:\n{proc.stdout}\n{proc.stderr}")
    status = json.loads(cluster_cli(run, "status", "--json").stdout)
    from leitstand.operator.cluster.layout import cache_paths

    return Cluster(run, str(cache_paths().binary("kubectl")), status)


E2E_KUBECONFIG = "LEITSTAND_E2E_KUBECONFIG"
"""An admin kubeconfig of a running cluster: the e2e tier uses it instead of starting one."""
E2E_NAMESPACE = "leitstand-e2e"
"""Where the external mode keeps its admin ServiceAccount."""
TOKEN_DURATION = "4h"


def kubectl_binary() -> str:
    from leitstand.operator.cluster.layout import cache_paths

    built = cache_paths().binary("kubectl")
    found = str(built) if built.is_file() else shutil.which("kubectl")
    if found is None:
        raise RuntimeError("no kubectl: run `leitstand cluster build` or put kubectl on PATH")
    return found


def _server_and_ca(kubeconfig: Path) -> tuple[str, bytes]:
    """The API server URL and CA bundle (PEM) of the kubeconfig's current context."""
    config = yaml.safe_load(kubeconfig.read_text())
    context_name = config.get("current-context")
    context = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    if "certificate-authority-data" in cluster:
        return cluster["server"], base64.b64decode(cluster["certificate-authority-data"])
    if "certificate-authority" in cluster:
        ca = Path(cluster["certificate-authority"])
        return cluster["server"], (ca if ca.is_absolute() else kubeconfig.parent / ca).read_bytes()
    raise RuntimeError(f"{kubeconfig}: the tests need the cluster's CA (certificate-authority[-data])")


def service_account_kubeconfig(
    cluster: Cluster,
    namespace: str,
    name: str,
    path: Path,
    *,
    user: str = "admin",
    default_namespace: str | None = None,
) -> Path:
    """A kubeconfig at `path` that authenticates as ServiceAccount `namespace/name` with a token from the
    TokenRequest API (`kubectl create token`), for the server and CA of `cluster`'s `user` kubeconfig."""
    from leitstand.operator.cluster.credentials import kubeconfig

    token = cluster.kubectl("create", "token", name, "-n", namespace, f"--duration={TOKEN_DURATION}", user=user)
    server, ca = _server_and_ca(cluster.kubeconfig(user))
    identity = f"system:serviceaccount:{namespace}:{name}"
    config = kubeconfig(server, ca, identity, token.stdout.strip(), default_namespace)
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(config))
    return path


def external_cluster(source: Path, folder: Path) -> Cluster:
    """The cluster of `source` (an admin kubeconfig) with the tests' identities as ServiceAccounts:

    - `admin`: `leitstand-e2e/e2e-admin`, bound to cluster-admin (a token, so the tests' raw watches work
      whatever the given kubeconfig authenticates with);
    - `leitstand-operator`: `leitstand-e2e/leitstand-operator`, bound by name to the ClusterRole
      `leitstand:operator` of deploy/rbac/ (applied here with deploy/namespace.yaml, as the local cluster
      does at `up`), like the local cluster's static user — not deploy's own ServiceAccount, whose tokens
      die when a test installs and uninstalls the chart over it;
    - each tenant of the local cluster (tenant-a, tenant-b, research, ...): ServiceAccount `<t>/<t>` with
      `edit` in its namespace `<t>` only.

    The Events in those namespaces and leitstand-system are deleted (left from an earlier run).
    """
    from leitstand.operator.cluster.credentials import USERS, deploy_rbac_files

    folder.mkdir(parents=True, exist_ok=True)
    given = Cluster(folder, kubectl_binary(), {}, kubeconfigs=(("given", source),), external=True)
    given.kubectl("apply", *[arg for path in deploy_rbac_files() for arg in ("-f", str(path))], user="given")
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": E2E_NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "e2e-admin", "namespace": E2E_NAMESPACE}},
        _binding("ClusterRoleBinding", "leitstand-e2e:admin", None, "cluster-admin", E2E_NAMESPACE, "e2e-admin"),
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "leitstand-operator", "namespace": E2E_NAMESPACE}},
        _binding("ClusterRoleBinding", "leitstand-e2e:operator", None, "leitstand:operator", E2E_NAMESPACE,
                 "leitstand-operator"),
    ]
    tenants = [u for u in USERS if u.namespace]
    for tenant in tenants:
        namespace = str(tenant.namespace)
        objects += [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": tenant.name, "namespace": namespace}},
            _binding("RoleBinding", f"leitstand:tenant:{tenant.name}", namespace, "edit", namespace, tenant.name),
        ]
    items = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    given.kubectl("apply", "-f", "-", user="given", stdin=items)
    # A cluster outlives a test run: Events of an earlier run would be counted as this run's (the
    # scenarios find a job's Events by its name, and reuse names).
    for namespace in sorted({str(t.namespace) for t in tenants} | {"leitstand-system"}):
        given.kubectl("delete", "events", "--all", "-n", namespace, user="given")
    service_account_kubeconfig(given, E2E_NAMESPACE, "e2e-admin", folder / "admin.kubeconfig", user="given")
    operator = folder / "leitstand-operator.kubeconfig"
    service_account_kubeconfig(given, E2E_NAMESPACE, "leitstand-operator", operator, user="given")
    for tenant in tenants:
        service_account_kubeconfig(given, str(tenant.namespace), tenant.name, folder / f"{tenant.name}.kubeconfig",
                                   user="given", default_namespace=tenant.namespace)
    server, _ = _server_and_ca(source)
    nodes = json.loads(given.kubectl("get", "nodes", "-o", "json", user="given").stdout)["items"]
    return Cluster(folder, given.kubectl_path, {"server": server, "nodes": len(nodes), "external": str(source)},
                   external=True)


def _binding(kind: str, name: str, namespace: str | None, role: str, sa_namespace: str, sa: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": {"leitstand.dev/e2e": "identity"}}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": metadata,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": sa_namespace}],
    }


@pytest.fixture(scope="session")
def external(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster | None]:
    """The cluster of LEITSTAND_E2E_KUBECONFIG, prepared by `external_cluster`; None when it is unset.
    At the end its admin and operator ServiceAccounts and bindings are deleted (tenants' accounts stay,
    like their namespaces)."""
    source = os.environ.get(E2E_KUBECONFIG)
    if not source:
        yield None
        return
    path = Path(source).expanduser().resolve()
    if not path.is_file():
        raise RuntimeError(f"{E2E_KUBECONFIG}={source}: no such file")
    prepared = external_cluster(path, tmp_path_factory.mktemp("external"))
    try:
        yield prepared
    finally:
        given = prepared.as_user("given", path)
        given.kubectl("delete", "clusterrolebinding", "leitstand-e2e:admin", "leitstand-e2e:operator",
                      "--ignore-not-found", user="given", check=False)
        given.kubectl("delete", "namespace", E2E_NAMESPACE, "--ignore-not-found", "--wait=false", user="given",
                      check=False)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, external: Cluster | None) -> Iterator[Cluster]:
    """4 DGX-B200-like nodes plus a pool of 2 L40S-like nodes, with kube-scheduler running (or the cluster
    of LEITSTAND_E2E_KUBECONFIG)."""
    if external is not None:
        yield external
        return
    run = tmp_path_factory.mktemp("cluster") / "run"
    started = start_cluster(
        run,
        "--nodes",
        "4",
        "--pool",
        "name=l40s,count=2,gpus=2,product=NVIDIA-L40S,jurisdiction=eu-fr",
        "--with-kube-scheduler",
    )
    try:
        yield started
    finally:
        cluster_cli(run, "down")


RACK_CLUSTER_ARGS = (
    "--nodes",
    "4",
    "--topology",
    "nodes-per-rack=2",
    "--pool",
    "name=l40s,count=2,gpus=2,product=NVIDIA-L40S,jurisdiction=eu-fr",
    "--pool",
    "name=research,count=1,gpus=8,product=NVIDIA-B200",
)
"""`leitstand cluster up` arguments of `rack_cluster`: also how to start an external cluster for
LEITSTAND_E2E_KUBECONFIG that the operator's scenarios accept."""


@pytest.fixture(scope="session")
def rack_cluster(tmp_path_factory: pytest.TempPathFactory, external: Cluster | None) -> Iterator[Cluster]:
    """A second cluster for the operator's scenarios, with racks of two and a reserved pool (no
    kube-scheduler: Leitstand is the only scheduler, and admins bind other pods by nodeName):

    - b200-0000 .. b200-0003, 8 GPUs each, pool b200, eu-de; rack-000 = 0000+0001, rack-001 = 0002+0003;
    - l40s-0000, l40s-0001, 2 GPUs each, pool l40s, jurisdiction eu-fr (rack-002);
    - research-0000, 8 GPUs, pool research (rack-003), for a queue that reserves it.

    With LEITSTAND_E2E_KUBECONFIG: that cluster, which must have these nodes (RACK_CLUSTER_ARGS).
    """
    if external is not None:
        yield external
        return
    run = tmp_path_factory.mktemp("rack-cluster") / "run"
    started = start_cluster(run, *RACK_CLUSTER_ARGS)
    try:
        yield started
    finally:
        cluster_cli(run, "down")
