"""The audit trail: every admission, eviction (reclaim, preemption, consolidation move), rejection and
lifecycle end, as one `Decision` record each.

Written by `loop` at the moment it decides (never reconstructed later); read by the HTTP API
(`GET /v1/decisions`) and the metrics (subscribers see each record once). Records are kept in a
bounded ring in memory and, because one process' memory is not a record, every one is also written
as a structured log line (logger `leitstand.audit`, with `--log-format json` one JSON object per
line) and — for the job's owner — as a Kubernetes Event on the TrainingJob (the loop posts those).

What this must not do: decide, or talk to the API server.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger("leitstand.audit")

KINDS = ("admit", "reclaim", "preempt", "move", "reject", "finish", "fail", "requeue", "grow", "shrink")
"""admit: placed and bound; reclaim / preempt / move: evicted (the `by` job caused it); reject: a
job's pending reason changed (the record carries the new one); finish / fail: it ended; requeue:
sent back to its queue by the operator (node lost, gang incomplete, restart after a failure);
grow / shrink: an elastic job got replicas on free GPUs, or lost some to reclaim or preemption
(reason Reclaimed or Preempted, `by` the job they went to) and kept running with the rest."""


@dataclass(frozen=True, slots=True)
class Decision:
    seq: int
    time: float
    """Unix seconds."""
    kind: str
    job: str
    """"namespace/name" of the TrainingJob (plain pods: "namespace/pod/name")."""
    queue: str
    namespace: str
    reason: str
    """A stable code (Admitted, Reclaimed, QueueAtLimit, NodeLost, ...)."""
    message: str
    by: str = ""
    """The other party: the job that caused an eviction."""
    by_queue: str = ""
    nodes: tuple[str, ...] = ()
    gpus_milli: int = 0
    cycle: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class DecisionLog:
    """A bounded ring of decisions with filtered, paginated reads (newest last)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._ring: deque[Decision] = deque(maxlen=capacity)
        self._seq = itertools.count(1)
        self._subscribers: list[Callable[[Decision], None]] = []

    def subscribe(self, callback: Callable[[Decision], None]) -> None:
        self._subscribers.append(callback)

    def record(self, **fields: Any) -> Decision:
        decision = Decision(seq=next(self._seq), **fields)
        self._ring.append(decision)
        log.info(
            "%s %s (%s): %s%s", decision.kind, decision.job, decision.reason, decision.message,
            f" [by {decision.by}]" if decision.by else "",
            extra={"fields": {"event": "decision", **{("decided_at" if k == "time" else k): v
                                                       for k, v in decision.as_dict().items()}}},
        )
        for callback in self._subscribers:
            callback(decision)
        return decision

    def __len__(self) -> int:
        return len(self._ring)

    def __iter__(self) -> Iterator[Decision]:
        return iter(self._ring)

    def query(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        queue: str | None = None,
        namespace: str | None = None,
        namespaces: frozenset[str] | None = None,
        kind: str | None = None,
        job: str | None = None,
        after_seq: int = 0,
        limit: int = 100,
    ) -> list[Decision]:
        """Matching decisions in order, starting after sequence number `after_seq` (the page token)."""
        found: list[Decision] = []
        for d in self._ring:
            if d.seq <= after_seq:
                continue
            if (since is not None and d.time < since) or (until is not None and d.time > until):
                continue
            if queue is not None and d.queue != queue and d.by_queue != queue:
                continue
            if namespace is not None and d.namespace != namespace:
                continue
            if namespaces is not None and d.namespace not in namespaces:
                continue
            if (kind is not None and d.kind != kind) or (job is not None and d.job != job):
                continue
            found.append(d)
            if len(found) >= limit:
                break
        return found
