"""Random placement cases for the parity and property tests: a small cluster, a partial fill, requests.

Who uses it: tests/parity/test_placement_parity.py and tests/property/test_placement_properties.py
(hypothesis draws the seed and the knobs; numpy builds the case, so a failing example is replayable
from its seed). Clusters have two labelled levels (spine > rack) plus the node, some nodes without
labels, mixed GPU counts and models, and a fill with whole GPUs and slices.
"""

from __future__ import annotations

import numpy as np

from leitstand.scheduler.codes import NONE
from leitstand.scheduler.model import GPU_MILLI, Node, NodeName, Topology
from leitstand.scheduler.placement import GangRequest
from leitstand.scheduler.state import ClusterState

LEVELS = ("spine", "rack")
MODELS = ("B200", "H100")


def random_state(seed: int, n_nodes: int, fill: float) -> ClusterState:
    rng = np.random.default_rng(seed)
    nodes = []
    for i in range(n_nodes):
        gpus = int(rng.choice([0, 2, 4, 8, 8, 8]))
        rack = int(rng.integers(0, 4))
        labelled = rng.random() > 0.1
        topology = (f"s{rack // 2}", f"r{rack}") if labelled else ("", "")
        nodes.append(
            Node(
                name=NodeName(f"n{i}"),
                gpus=gpus,
                cpu_milli=int(rng.choice([16_000, 64_000, 128_000])),
                memory_mib=int(rng.choice([65_536, 262_144])),
                gpu_model=str(rng.choice(MODELS)) if gpus else "",
                topology=topology,
            )
        )
    state = ClusterState.from_nodes(nodes, Topology(LEVELS))
    for i in range(n_nodes):
        for g in range(int(state.gpu_count[i])):
            u = rng.random()
            if u < fill * 0.6:
                state.gpu_free_milli[i, g] = 0
            elif u < fill:
                state.gpu_free_milli[i, g] = int(rng.choice([250, 500, 750]))
        state.cpu_free_milli[i] = int(state.cpu_capacity_milli[i] * (1 - fill * rng.random()))
        state.memory_free_mib[i] = int(state.memory_capacity_mib[i] * (1 - fill * rng.random()))
    state.refresh_aggregates()
    return state


def random_request(state: ClusterState, rng: np.random.Generator) -> GangRequest:
    kind = rng.random()
    if kind < 0.3:
        gpus, milli = 1, int(rng.choice([100, 250, 500, 700]))
    elif kind < 0.4:
        gpus, milli = int(rng.choice([2, 3])), int(rng.choice([250, 500]))
    elif kind < 0.5:
        gpus, milli = 0, 0
    else:
        gpus, milli = int(rng.choice([1, 2, 4, 8])), GPU_MILLI
    levels = [NONE, NONE, 0, 1, 2]
    required = int(rng.choice(levels))
    preferred = int(rng.choice(levels))
    models = [m for m in MODELS if rng.random() < 0.3]
    mask = state.node_mask(gpu_models=models)
    if rng.random() < 0.1:
        mask &= rng.random(state.n_nodes) < 0.5
    return GangRequest(
        replicas=int(rng.choice([1, 1, 2, 3, 4, 6])),
        gpus=gpus,
        gpu_milli=milli,
        cpu_milli=int(rng.choice([0, 1000, 8000, 32_000])),
        memory_mib=int(rng.choice([0, 1024, 65_536])),
        node_mask=mask,
        required_level=required,
        preferred_level=preferred,
        gpu_models=tuple(models),
    )
