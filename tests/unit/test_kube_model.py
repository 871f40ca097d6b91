"""Translation of raw Kubernetes JSON into the core's value types."""

from __future__ import annotations

from typing import Any

import pytest

from leitstand.operator import kube_model as km


def node_json(name: str = "b200-0000", gpus: str = "8", ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {
                "leitstand.dev/spine": "spine-00",
                "leitstand.dev/rack": "rack-001",
                "leitstand.dev/nvlink-domain": "nvl-0003",
                "nvidia.com/gpu.product": "NVIDIA-B200",
                "leitstand.dev/node-pool": "b200",
                "leitstand.dev/jurisdiction": "eu-de",
            },
        },
        "spec": {},
        "status": {
            "allocatable": {"cpu": "224", "memory": "2Ti", "nvidia.com/gpu": gpus},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def pod_json(i: int, **annotations: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"train-{i}",
            "namespace": "tenant-a",
            "labels": {km.JOB_LABEL: "train"},
            "annotations": annotations,
        },
        "spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": "8", "cpu": "500m", "memory": "64Gi"}}}]},
    }


@pytest.mark.parametrize(
    ("text", "milli"), [("224", 224_000), ("500m", 500), ("1.5", 1500), ("0", 0)]
)
def test_cpu_quantities(text: str, milli: int) -> None:
    assert km.cpu_milli(text) == milli


@pytest.mark.parametrize(
    ("text", "mib"), [("2Ti", 2 * 1024 * 1024), ("64Gi", 65536), ("1048576Ki", 1024), ("1G", 953)]
)
def test_memory_quantities(text: str, mib: int) -> None:
    assert km.memory_mib(text) == mib


def test_memory_quantity_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a memory quantity"):
        km.memory_mib("lots")


def test_node_translation_reads_topology_model_pool_and_readiness() -> None:
    node = km.node_from_json(node_json())
    assert (node.gpus, node.cpu_milli, node.gpu_model) == (8, 224_000, "NVIDIA-B200")
    assert node.topology == ("spine-00", "rack-001", "nvl-0003")
    assert (node.node_pool, node.jurisdiction, node.schedulable) == ("b200", "eu-de", True)
    assert not km.node_from_json(node_json(ready=False)).schedulable


def test_gang_from_pods_reads_shape_and_wishes() -> None:
    pods = [pod_json(i, **{km.REQUIRED_TOPOLOGY: "rack", km.PRIORITY: "75"}) for i in range(2)]
    gang = km.job_from_pods(pods, created_at=3.0)
    job = gang.job
    assert (job.id, job.queue, job.replicas, job.gpus, job.gpu_milli) == ("tenant-a/train", "tenant-a", 2, 8, 1000)
    assert (job.cpu_milli, job.memory_mib, job.required_level, job.priority) == (500, 65536, "rack", 75)
    assert job.is_preemptible and not gang.bound


def test_fractional_gpu_and_its_errors() -> None:
    pod = pod_json(0, **{km.GPU_FRACTION: "0.25"})
    pod["spec"]["containers"][0]["resources"]["limits"].pop("nvidia.com/gpu")
    job = km.job_from_pods([pod], created_at=0).job
    assert (job.gpus, job.gpu_milli) == (1, 250)
    with pytest.raises(km.PodSpecError, match=r"tenant-a/train-0.*gpu-fraction"):
        km.job_from_pods([pod_json(0, **{km.GPU_FRACTION: "0.25"})], created_at=0)
    with pytest.raises(km.PodSpecError, match="between 0 and 1"):
        km.job_from_pods([pod_json(0, **{km.GPU_FRACTION: "half"})], created_at=0)
