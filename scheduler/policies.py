"""Placement policies: the context a policy needs, built once per cluster (and per seed).

STUB by the lead: the policies engineer replaces this with the full set (leitstand, Random, DotProd,
GpuClustering, GpuPacking, BestFit, FGD) and their typical-task tables. The interface below is what
`placement.py` and the cycle rely on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from leitstand.scheduler.codes import PolicyCode
from leitstand.scheduler.state import ClusterState


@dataclass(frozen=True, slots=True)
class PolicyContext:
    code: PolicyCode
    node_rank: NDArray[np.int64]
    """Tie-break priority per node: among equal scores the node with the smallest rank wins."""

    @classmethod
    def build(cls, state: ClusterState, policy: str | PolicyCode = PolicyCode.LEITSTAND) -> PolicyContext:
        code = policy if isinstance(policy, PolicyCode) else PolicyCode.parse(policy)
        return cls(code=code, node_rank=np.arange(state.n_nodes, dtype=np.int64))
