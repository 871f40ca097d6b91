"""Node generation for the local cluster: pools, topology labels, capacity (no binaries needed)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from leitstand.operator.cluster.nodes import (
    TOPOLOGY_LABELS,
    ClusterSpec,
    NodePool,
    NodeSpecError,
    Topology,
    make_spec,
    node_manifests,
    parse_pool,
    parse_topology,
)


def test_default_pool_is_dgx_b200_with_gpu_capacity() -> None:
    [node] = node_manifests(make_spec(nodes=1))
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "8"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-B200"
    assert node["metadata"]["annotations"] == {"kwok.x-k8s.io/node": "fake"}
    assert "conditions" not in node["status"]  # so kwok's node-initialize stage fires
    for label in (*TOPOLOGY_LABELS, "leitstand.dev/node-pool", "leitstand.dev/jurisdiction"):
        assert label in node["metadata"]["labels"]


def test_racks_and_spines_follow_the_topology_sizes() -> None:
    spec = make_spec(nodes=70, topology="nodes-per-rack=32,racks-per-spine=2,nodes-per-nvlink-domain=2")
    manifests = node_manifests(spec)
    racks = Counter(n["metadata"]["labels"]["leitstand.dev/rack"] for n in manifests)
    assert sorted(racks.values()) == [6, 32, 32]
    spines = {
        n["metadata"]["labels"]["leitstand.dev/rack"]: n["metadata"]["labels"]["leitstand.dev/spine"]
        for n in manifests
    }
    assert spines == {"rack-000": "spine-00", "rack-001": "spine-00", "rack-002": "spine-01"}
    domains = Counter(n["metadata"]["labels"]["leitstand.dev/nvlink-domain"] for n in manifests)
    assert set(domains.values()) == {2}
    assert len({n["metadata"]["name"] for n in manifests}) == 70
    assert len({n["status"]["addresses"][0]["address"] for n in manifests}) == 70


def test_mixed_pools_start_on_fresh_racks() -> None:
    spec = make_spec(nodes=3, pools=["name=l40s,count=2,gpus=2,product=NVIDIA-L40S,jurisdiction=eu-fr"])
    manifests = node_manifests(spec)
    l40s = [n for n in manifests if n["metadata"]["labels"]["leitstand.dev/node-pool"] == "l40s"]
    assert [n["metadata"]["name"] for n in l40s] == ["l40s-0000", "l40s-0001"]
    assert {n["status"]["capacity"]["nvidia.com/gpu"] for n in l40s} == {"2"}
    assert {n["metadata"]["labels"]["leitstand.dev/rack"] for n in l40s} == {"rack-001"}
    assert {n["metadata"]["labels"]["leitstand.dev/jurisdiction"] for n in l40s} == {"eu-fr"}


def test_nodes_file(tmp_path: Path) -> None:
    path = tmp_path / "nodes.yaml"
    path.write_text(
        "topology: {nodes_per_rack: 4}\n"
        "pools:\n- {name: h100, count: 5, gpus: 8, product: NVIDIA-H100, labels: {tier: a}}\n"
    )
    spec = make_spec(nodes_file=path)
    assert spec.topology == Topology(nodes_per_rack=4)
    assert spec.node_count == 5
    assert node_manifests(spec)[4]["metadata"]["labels"]["leitstand.dev/rack"] == "rack-001"
    assert node_manifests(spec)[0]["metadata"]["labels"]["tier"] == "a"


@pytest.mark.parametrize("bad", ["count=x", "name=Bad_Name", "colour=red", "gpus"])
def test_bad_pool_is_a_clear_error(bad: str) -> None:
    with pytest.raises(NodeSpecError):
        parse_pool(bad)


def test_bad_topology_is_a_clear_error() -> None:
    with pytest.raises(NodeSpecError, match="multiple"):
        parse_topology("nodes-per-rack=32,nodes-per-nvlink-domain=5")
    with pytest.raises(NodeSpecError, match="unknown"):
        parse_topology("racks=3")


def test_duplicate_pool_names_rejected() -> None:
    with pytest.raises(NodeSpecError, match="unique"):
        make_spec(nodes=1, pools=["name=b200,count=1"])


def test_zero_default_nodes_keeps_only_extra_pools() -> None:
    spec = make_spec(nodes=0, pools=["name=l4,count=1,gpus=1"])
    assert spec.pools == (NodePool(name="l4", count=1, gpus=1),)
    assert ClusterSpec().node_count == 4
