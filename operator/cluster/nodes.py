"""Simulated GPU nodes: shapes, topology labels, Node manifests, and creating them fast.

Called by `controlplane.up` and `commands` (`leitstand cluster up --nodes/--pool/--topology/--nodes-file`).
A cluster is a list of pools (`NodePool`: count, GPUs per node, GPU model, CPU, memory, jurisdiction),
laid out on a fat tree: nodes fill NVLink domains, domains fill racks (`nodes_per_rack`, 32 = one DGX
scalable unit), racks fill spines (`racks_per_spine`). A pool always starts on a fresh rack. Labels:

* `leitstand.dev/spine`, `leitstand.dev/rack`, `leitstand.dev/nvlink-domain`, `kubernetes.io/hostname`
  (the topology levels, outermost first, as the scheduler reads them);
* `nvidia.com/gpu.product`, `nvidia.com/gpu.count`, `nvidia.com/gpu.present`,
  `leitstand.dev/node-pool`, `leitstand.dev/jurisdiction`, `type=kwok`.

Each Node is created with `status.capacity/allocatable` (incl. `nvidia.com/gpu`) and the annotation
`kwok.x-k8s.io/node: fake`, so KWOK manages it and keeps those values. Generation is pure; `create_nodes`
POSTs them concurrently over keep-alive connections.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from leitstand.operator.cluster.kubeapi import KubeApi

TOPOLOGY_LABELS = (
    "leitstand.dev/spine",
    "leitstand.dev/rack",
    "leitstand.dev/nvlink-domain",
    "kubernetes.io/hostname",
)
KWOK_ANNOTATION = {"kwok.x-k8s.io/node": "fake"}


class NodeSpecError(ValueError):
    """A pool, topology or nodes-file entry is invalid; the message names the field."""


@dataclass(frozen=True, slots=True)
class Topology:
    nodes_per_nvlink_domain: int = 1
    """1 for DGX B200/H100 (8 GPUs on one NVSwitch); 18 for a GB200 NVL72 rack of 4-GPU trays."""
    nodes_per_rack: int = 32
    racks_per_spine: int = 8

    def __post_init__(self) -> None:
        for name in ("nodes_per_nvlink_domain", "nodes_per_rack", "racks_per_spine"):
            if getattr(self, name) < 1:
                raise NodeSpecError(f"topology {name} must be >= 1")
        if self.nodes_per_rack % self.nodes_per_nvlink_domain:
            raise NodeSpecError("topology nodes_per_rack must be a multiple of nodes_per_nvlink_domain")


@dataclass(frozen=True, slots=True)
class NodePool:
    name: str = "b200"
    count: int = 4
    gpus: int = 8
    gpu_product: str = "NVIDIA-B200"
    gpu_memory_mib: int = 183_359
    cpu: str = "224"
    memory: str = "2Ti"
    pods: int = 110
    jurisdiction: str = "eu-de"
    extra_labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", self.name):
            raise NodeSpecError(f"pool name {self.name!r} must be a DNS label (lowercase, digits, '-')")
        if self.count < 0 or self.gpus < 0:
            raise NodeSpecError(f"pool {self.name}: count and gpus must be >= 0")


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    pools: tuple[NodePool, ...] = (NodePool(),)
    topology: Topology = Topology()

    @property
    def node_count(self) -> int:
        return sum(pool.count for pool in self.pools)


_POOL_KEYS = {
    "name": str,
    "count": int,
    "gpus": int,
    "gpu_product": str,
    "product": str,
    "gpu_memory_mib": int,
    "cpu": str,
    "memory": str,
    "pods": int,
    "jurisdiction": str,
}


def parse_pool(text: str) -> NodePool:
    """`name=l40s,count=16,gpus=2,product=NVIDIA-L40S,jurisdiction=eu-fr` -> NodePool."""
    return pool_from_mapping(_pairs(text, "pool"))


def pool_from_mapping(raw: dict[str, Any]) -> NodePool:
    values: dict[str, Any] = {}
    labels: dict[str, str] = {}
    for key, value in raw.items():
        norm = key.replace("-", "_")
        if norm == "labels" and isinstance(value, dict):
            labels = {str(k): str(v) for k, v in value.items()}
            continue
        if norm not in _POOL_KEYS:
            raise NodeSpecError(f"unknown pool field {key!r}; known: {', '.join(sorted(_POOL_KEYS))}, labels")
        try:
            values["gpu_product" if norm == "product" else norm] = _POOL_KEYS[norm](value)
        except ValueError as exc:
            raise NodeSpecError(f"pool field {key}={value!r}: {exc}") from exc
    return NodePool(**values, extra_labels=labels)


def parse_topology(text: str) -> Topology:
    """`nodes-per-rack=32,racks-per-spine=8,nodes-per-nvlink-domain=1` (any subset) -> Topology."""
    return topology_from_mapping(_pairs(text, "topology"))


def topology_from_mapping(raw: dict[str, Any]) -> Topology:
    known = {"nodes_per_nvlink_domain", "nodes_per_rack", "racks_per_spine"}
    values: dict[str, int] = {}
    for key, value in raw.items():
        norm = key.replace("-", "_")
        if norm not in known:
            raise NodeSpecError(f"unknown topology field {key!r}; known: {', '.join(sorted(known))}")
        try:
            values[norm] = int(value)
        except ValueError as exc:
            raise NodeSpecError(f"topology {key}={value!r} is not an integer") from exc
    return Topology(**values)


def _pairs(text: str, what: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise NodeSpecError(f"{what} entry {item!r} is not key=value")
        pairs[key.strip()] = value.strip()
    return pairs


def load_spec(path: Path) -> ClusterSpec:
    """A nodes file: `{topology: {nodes_per_rack: 32, ...}, pools: [{name: b200, count: 64, ...}, ...]}`."""
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise NodeSpecError(f"{path}: expected a mapping with 'pools' and optional 'topology'")
    pools = tuple(pool_from_mapping(p) for p in raw.get("pools", []))
    if not pools:
        raise NodeSpecError(f"{path}: no pools given")
    return ClusterSpec(pools=pools, topology=topology_from_mapping(raw.get("topology") or {}))


def make_spec(
    nodes: int | None = None,
    pools: Iterable[str] = (),
    topology: str | None = None,
    nodes_file: Path | None = None,
) -> ClusterSpec:
    """Combine the CLI options: a nodes file, or `--nodes N` of the default pool plus any `--pool`s."""
    spec = load_spec(nodes_file) if nodes_file else ClusterSpec()
    extra = tuple(parse_pool(p) for p in pools)
    if not nodes_file:
        default = replace(spec.pools[0], count=nodes if nodes is not None else spec.pools[0].count)
        spec = ClusterSpec(pools=(default, *extra) if default.count else extra, topology=spec.topology)
    elif extra:
        spec = ClusterSpec(pools=spec.pools + extra, topology=spec.topology)
    if topology:
        spec = ClusterSpec(pools=spec.pools, topology=parse_topology(topology))
    names = [p.name for p in spec.pools]
    if len(set(names)) != len(names):
        raise NodeSpecError(f"pool names must be unique, got {names}")
    return spec


def node_manifests(spec: ClusterSpec) -> list[dict[str, Any]]:
    """One Node object per simulated machine, with topology labels and GPU capacity."""
    topo = spec.topology
    manifests: list[dict[str, Any]] = []
    rack = 0  # global rack index; a pool starts on a fresh rack
    domain = 0
    index = 0
    for pool in spec.pools:
        for i in range(pool.count):
            if i and i % topo.nodes_per_rack == 0:
                rack += 1
            if i and i % topo.nodes_per_nvlink_domain == 0:
                domain += 1
            name = f"{pool.name}-{i:04d}"
            manifests.append(_node(name, pool, index, spine=rack // topo.racks_per_spine, rack=rack, domain=domain))
            index += 1
        if pool.count:
            rack += 1
            domain += 1
    return manifests


def _node(name: str, pool: NodePool, index: int, spine: int, rack: int, domain: int) -> dict[str, Any]:
    resources = {
        "cpu": pool.cpu,
        "memory": pool.memory,
        "pods": str(pool.pods),
        "ephemeral-storage": "30Ti",
        "nvidia.com/gpu": str(pool.gpus),
    }
    labels = {
        "type": "kwok",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "leitstand.dev/spine": f"spine-{spine:02d}",
        "leitstand.dev/rack": f"rack-{rack:03d}",
        "leitstand.dev/nvlink-domain": f"nvl-{domain:04d}",
        "leitstand.dev/node-pool": pool.name,
        "leitstand.dev/jurisdiction": pool.jurisdiction,
        "nvidia.com/gpu.product": pool.gpu_product,
        "nvidia.com/gpu.count": str(pool.gpus),
        "nvidia.com/gpu.memory": str(pool.gpu_memory_mib),
        "nvidia.com/gpu.present": "true" if pool.gpus else "false",
        **pool.extra_labels,
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": dict(KWOK_ANNOTATION)},
        "spec": {},
        "status": {
            "capacity": resources,
            "allocatable": dict(resources),
            # Data only (non-routable); kwok adds no address when one is present.
            "addresses": [
                {
                    "type": "InternalIP",
                    "address": f"10.{64 + (index >> 16)}.{(index >> 8) & 255}.{index & 255}",
                },
                {"type": "Hostname", "address": name},
            ],
        },
    }


def create_nodes(api: KubeApi, manifests: list[dict[str, Any]], workers: int = 16) -> int:
    """POST every Node (existing ones are left alone) from `workers` threads; return how many were sent."""

    def create(node: dict[str, Any]) -> int:
        return int(api.create("/api/v1/nodes", node))

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(manifests)))) as pool:
        list(pool.map(create, manifests))
    api.close_all()
    return len(manifests)


def ready_count(api: KubeApi, selector: str = "type=kwok") -> tuple[int, int]:
    """(Ready nodes, all nodes) among those matching the label selector."""
    body = api.get(f"/api/v1/nodes?labelSelector={selector}")
    items = body.get("items", [])
    ready = sum(
        any(c.get("type") == "Ready" and c.get("status") == "True" for c in n.get("status", {}).get("conditions") or [])
        for n in items
    )
    return ready, len(items)
