"""End-to-end fixtures: one local cluster (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
KWOK) for the whole test session, started through the real CLI and stopped by its recorded PIDs.

Every test here is marked `e2e`, so `pytest -m "not e2e"` runs the fast tier without binaries. The
cluster gets its own run folder under pytest's tmp dir (so a developer's own cluster is untouched) and
free loopback ports; the binaries come from the shared cache (`leitstand cluster build`, run by `up`
if missing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

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


@dataclass(frozen=True)
class Cluster:
    run: Path
    kubectl_path: str
    status: dict[str, Any]

    def kubeconfig(self, user: str = "admin") -> Path:
        return self.run / f"{user}.kubeconfig"

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


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """4 DGX-B200-like nodes plus a pool of 2 L40S-like nodes, with kube-scheduler running."""
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


@pytest.fixture(scope="session")
def rack_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A second cluster for the operator's scenarios, with racks of two and a reserved pool (no
    kube-scheduler: Leitstand is the only scheduler, and admins bind other pods by nodeName):

    - b200-0000 .. b200-0003, 8 GPUs each, pool b200, eu-de; rack-000 = 0000+0001, rack-001 = 0002+0003;
    - l40s-0000, l40s-0001, 2 GPUs each, pool l40s, jurisdiction eu-fr (rack-002);
    - research-0000, 8 GPUs, pool research (rack-003), for a queue that reserves it.
    """
    run = tmp_path_factory.mktemp("rack-cluster") / "run"
    started = start_cluster(
        run,
        "--nodes",
        "4",
        "--topology",
        "nodes-per-rack=2",
        "--pool",
        "name=l40s,count=2,gpus=2,product=NVIDIA-L40S,jurisdiction=eu-fr",
        "--pool",
        "name=research,count=1,gpus=8,product=NVIDIA-B200",
    )
    try:
        yield started
    finally:
        cluster_cli(run, "down")
