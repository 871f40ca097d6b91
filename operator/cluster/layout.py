"""Where the local cluster keeps things, and the pinned versions it builds.

The cache (`$LEITSTAND_CACHE`, default `~/.cache/leitstand`) holds the Go wrapper modules, binaries and
the KWOK stage files copied from the kwok module; the run folder (`$LEITSTAND_RUN`, default
`<cache>/run`) holds one running cluster: PKI, tokens, kubeconfigs, logs, etcd data and the state file
with the PIDs. Neither lives in the repo. Read by `build`, `controlplane` and `commands`; pure paths,
no side effects beyond `mkdir` where a function says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

K8S_VERSION = "1.34.10"
"""kube-apiserver, kube-controller-manager, kube-scheduler and kubectl all come from this release."""
ETCD_VERSION = "3.6.16"
KWOK_VERSION = "0.8.0"

K8S_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")

UPSTREAM_STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-delete.yaml",
)
"""KWOK stage files (paths under the kwok module's `kustomize/stage/`) copied into the cache at build time."""


def repo_root() -> Path:
    """The source checkout this module runs from (editable install), for `deploy/kwok/`."""
    return Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    return Path(os.environ.get("LEITSTAND_CACHE") or Path.home() / ".cache" / "leitstand").expanduser()


def run_dir() -> Path:
    env = os.environ.get("LEITSTAND_RUN")
    return Path(env).expanduser() if env else cache_dir() / "run"


@dataclass(frozen=True, slots=True)
class CachePaths:
    root: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def src(self) -> Path:
        return self.root / "src"

    @property
    def stages(self) -> Path:
        return self.root / "stages" / f"kwok-{KWOK_VERSION}"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def binary(self, name: str) -> Path:
        return self.bin / name


def cache_paths() -> CachePaths:
    return CachePaths(cache_dir())


def own_stage_files() -> list[Path]:
    """Leitstand's committed KWOK stages (pod finish after an annotated duration)."""
    return sorted((repo_root() / "deploy" / "kwok").glob("*.yaml"))
