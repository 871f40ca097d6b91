"""The cluster as the scheduler believes it is: nodes, pods, and the core's `ClusterState`, kept current
pod by pod.

Fed by the Pod and Node informers (`on_pod`, `on_node`, synchronously in the main loop) and by the
loop itself when it commits a plan (`assume`: GPUs promised to pods that are being created and bound;
`release_evicted`: GPUs of gangs being evicted, already promised to their preemptor). Read by the loop
to build each cycle's snapshot.

Accounting rules (why no GPU is ever booked twice):
- every pod that is bound and not finished holds its node's resources, whoever scheduled it: GPUs from
  its `leitstand.dev/gpus` annotation when Leitstand placed it, else the lowest wholly free GPU indices
  (a device plugin picks the real ones; only the count matters to other schedulers);
- a pod the loop created for a placement holds it from the moment the plan is committed (`assume`),
  before the watch shows it bound;
- the pods of a gang Leitstand evicts stop holding at `release_evicted`, because the plan that evicted
  them also placed the preemptor there; the binder creates the preemptor's pods only after the
  victims' pods are gone from the API server;
- GPU reservation pods (which hold a shared GPU for other schedulers' benefit) hold nothing here: the
  fraction pods on that GPU already do;
- a pod that does not fit the node's free resources (another scheduler over-committed it, or a node
  shrank) marks the node `conflicted`: it is offered to no job until the conflict clears.

A node change that matters (capacity, labels, readiness, taints) rebuilds the arrays and re-charges
every pod (O(pods)); heartbeats never reach here (the informer drops equal records).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from leitstand.operator.service.records import ROLE_RESERVATION, NodeRecord, PodRecord
from leitstand.scheduler.model import GPU_MILLI, NodeName, Topology
from leitstand.scheduler.state import ClusterState, StateError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Charge:
    node: str
    gpu_indices: tuple[int, ...]
    gpu_milli: int
    cpu_milli: int
    memory_mib: int


class ClusterCache:
    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.nodes: dict[str, NodeRecord] = {}
        self.pods: dict[str, PodRecord] = {}
        self.pods_by_job: dict[str, dict[str, PodRecord]] = {}
        """TrainingJob key ("ns/name") → its replica pods by pod key."""
        self.reservations: dict[str, PodRecord] = {}
        self.charges: dict[str, Charge] = {}
        self.shared: set[str] = set()
        """Keys of the charges that hold part of a GPU (0 < milli < 1000): the loop keeps a GPU reservation
        pod per shared GPU, and looks only at these instead of every charge in every cycle."""
        self.assumed: dict[str, Charge] = {}
        """Pods being created/bound for a committed plan, by pod key (this process only)."""
        self.evicted: set[str] = set()
        """Pod keys Leitstand evicted; their resources are promised elsewhere until they are gone."""
        self.conflicts: dict[str, tuple[str, str]] = {}
        """Pod key → (node, why): pods that do not fit their node; such nodes are offered to no job."""
        self._base_schedulable = np.zeros(0, dtype=np.bool_)
        self.state = ClusterState.from_nodes([], topology)
        self.generation = 0
        """Bumped on every rebuild (node set or node properties changed)."""
        self._nodes_dirty = True
        self._touched_jobs: set[str] = set()
        """TrainingJob keys whose pods changed since `take_touched_jobs` (the loop follows only those)."""

    # -- informer callbacks ---------------------------------------------------------------------

    def on_node(self, kind: str, key: str, old: NodeRecord | None, new: NodeRecord | None) -> None:
        if new is None:
            self.nodes.pop(key, None)
        else:
            self.nodes[key] = new
        self._nodes_dirty = True

    def on_pod(self, kind: str, key: str, old: PodRecord | None, new: PodRecord | None) -> None:
        for record in (old, new):
            if record is not None and record.job:
                self._touched_jobs.add(f"{record.namespace}/{record.job}")
        if old is not None and old.job:
            group = self.pods_by_job.get(f"{old.namespace}/{old.job}")
            if group is not None:
                group.pop(key, None)
                if not group:
                    del self.pods_by_job[f"{old.namespace}/{old.job}"]
        if old is not None and old.role == ROLE_RESERVATION:
            self.reservations.pop(key, None)
        if new is None:
            self.pods.pop(key, None)
            self.evicted.discard(key)
            self.assumed.pop(key, None)
        else:
            self.pods[key] = new
            if new.job:
                self.pods_by_job.setdefault(f"{new.namespace}/{new.job}", {})[key] = new
            if new.role == ROLE_RESERVATION:
                self.reservations[key] = new
            if new.node and key in self.assumed and new.node != self.assumed[key].node:
                log.warning("pod %s was bound to %s, not to the planned %s", key, new.node, self.assumed[key].node)
                del self.assumed[key]
        if not self._nodes_dirty:
            self._recharge(key)

    # -- loop side ------------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Rebuild the arrays if a node changed since the last call; True when it did."""
        if not self._nodes_dirty:
            return False
        self._nodes_dirty = False
        nodes = sorted(self.nodes.values(), key=lambda n: n.name)
        self.state = ClusterState.from_nodes([n.node for n in nodes], self.topology)
        self.generation += 1
        self._base_schedulable = self.state.schedulable.copy()
        self.charges.clear()
        self.shared.clear()
        self.conflicts.clear()
        for key in list(self.pods) + [k for k in self.assumed if k not in self.pods]:
            self._recharge(key)
        return True

    def take_touched_jobs(self) -> set[str]:
        """The TrainingJobs (ns/name) with a pod event since the last call."""
        touched, self._touched_jobs = self._touched_jobs, set()
        return touched

    def assume(self, pod_key: str, charge: Charge) -> None:
        """The plan promised `charge` to a pod that is about to be created and bound."""
        self.assumed[pod_key] = charge
        self._recharge(pod_key)

    def forget(self, pod_key: str) -> None:
        """A creation or bind failed: the promise is void (the pod, if created, is being deleted)."""
        if self.assumed.pop(pod_key, None) is not None:
            self._recharge(pod_key)

    def release_evicted(self, pod_keys: Iterable[str]) -> None:
        for key in pod_keys:
            self.evicted.add(key)
            self._recharge(key)

    def node_index(self, name: str) -> int | None:
        return self.state.node_index.get(NodeName(name))

    def apply_conflicts(self) -> dict[str, str]:
        """Nodes with a pod that does not fit are not schedulable this cycle; returns node → why."""
        held = {node: why for node, why in self.conflicts.values()}
        self.state.schedulable[:] = self._base_schedulable
        for name in held:
            index = self.node_index(name)
            if index is not None:
                self.state.schedulable[index] = False
        return held

    # -- accounting -------------------------------------------------------------------------------

    def _desired(self, key: str) -> Charge | None:
        pod = self.pods.get(key)
        if key in self.evicted:
            return None
        if pod is not None and pod.node:
            if not pod.holds_resources or pod.role == ROLE_RESERVATION:
                return None
            assumed = self.assumed.get(key)
            if assumed is not None and assumed.node == pod.node:
                return assumed
            milli = pod.gpu_milli
            count = 1 if pod.fraction_milli else pod.gpus
            indices = pod.assigned if len(pod.assigned) == count else None
            if indices is None:
                indices = self._free_indices(pod.node, count, key)
            return Charge(pod.node, indices, milli if count else 0, pod.cpu_milli, pod.memory_mib)
        if pod is not None and pod.terminal:
            return None
        assumed = self.assumed.get(key)
        if assumed is None and pod is not None and pod.planned_node and pod.role != ROLE_RESERVATION:
            # Created for a placement (by this process or a predecessor) and not bound yet: a bind
            # request may still be in flight from a process that died, so the planned GPUs stay taken
            # until the pod is bound there or gone.
            count = 1 if pod.fraction_milli else pod.gpus
            if len(pod.assigned) == count:
                return Charge(pod.planned_node, pod.assigned, pod.gpu_milli if count else 0, pod.cpu_milli,
                              pod.memory_mib)
        return assumed

    def _free_indices(self, node: str, count: int, key: str) -> tuple[int, ...]:
        if count == 0:
            return ()
        index = self.node_index(node)
        if index is None:
            return ()
        free = np.flatnonzero(self.state.gpu_free_milli[index, : self.state.gpu_count[index]] == GPU_MILLI)
        return tuple(int(g) for g in free[:count]) if len(free) >= count else tuple(range(count))

    def _recharge(self, key: str) -> None:
        want = self._desired(key)
        have = self.charges.get(key)
        if want is None or (have is None and key in self.conflicts):
            self.conflicts.pop(key, None)
        if want == have:
            return
        if have is not None:
            index = self.node_index(have.node)
            if index is not None:
                try:
                    self.state.release(index, have.gpu_indices, have.gpu_milli, have.cpu_milli, have.memory_mib)
                except StateError as exc:
                    log.error("releasing %s on %s failed: %s", key, have.node, exc)
            del self.charges[key]
            self.shared.discard(key)
        if want is None:
            return
        index = self.node_index(want.node)
        if index is None:
            return  # a pod on a node we do not know (yet): nothing to charge
        try:
            self.state.allocate(index, want.gpu_indices, want.gpu_milli, want.cpu_milli, want.memory_mib)
        except StateError as exc:
            self.conflicts[key] = (want.node, f"pod {key} does not fit: {exc}")
            log.warning("node %s held back: pod %s does not fit (%s)", want.node, key, exc)
            return
        self.charges[key] = want
        if 0 < want.gpu_milli < GPU_MILLI:
            self.shared.add(key)

    # -- views ------------------------------------------------------------------------------------

    def job_pods(self, job_key: str) -> dict[str, PodRecord]:
        return self.pods_by_job.get(job_key, {})

    @property
    def synced_nodes(self) -> int:
        return len(self.nodes)
