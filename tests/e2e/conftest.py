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
from collections.abc import Iterator
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
