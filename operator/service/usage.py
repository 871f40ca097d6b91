"""GPU usage accounting: GPU-seconds per queue and per namespace, for showback and time-based fair share.

Called by `loop` once per cycle with what is allocated now (milli-GPU per (queue, namespace)); the
meter integrates over wall time into per-minute buckets (so `GET /v1/usage?from=&to=` can answer
any window at one-minute resolution) and running totals per queue.

Surviving restarts (`resume`, once per leaf queue when the leader first sees it): each queue's total
(`status.usageGPUSeconds`) is written to the Queue's status by the loop every 15 s together with the
moment it counts up to (`status.usageUpdatedAt`, both in one patch, so the pair is always consistent).
A new process continues from that pair and charges the gap — from `usageUpdatedAt` to its own first
tick, the seconds the old process counted but never wrote plus the seconds nobody was counting — from
the pods on the API server: every pod of the queue that held GPUs in the gap is charged for the part
of its run (`status.startTime` → container termination, or still running) inside it. The per-minute
history behind `from`/`to` windows is rebuilt the same way for the time before the first tick: from
the pods still on the API server (finished pods stay until their TrainingJob is deleted; pods deleted
before the restart — evicted gangs, deleted jobs — are in the totals but not in the rebuilt windows).
`covered_from` is this process' first tick: from there on the history is complete.

Time-based fair share: `decayed` gives each queue's usage with exponential decay of a half-life,
which the core takes as `Snapshot.usage_milli_seconds` when `usage_half_life_seconds` is set.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from leitstand.operator.service.records import ROLE_RESERVATION, PodRecord, timestamp
from leitstand.scheduler.model import GPU_MILLI

BUCKET_SECONDS = 60


@dataclass(frozen=True, slots=True)
class UsageRow:
    key: str
    """A queue or a namespace name."""
    gpu_seconds: float

    @property
    def gpu_hours(self) -> float:
        return self.gpu_seconds / 3600.0


class UsageMeter:
    def __init__(self, started: float, max_buckets: int = 60 * 24 * 35) -> None:
        self.started = started
        self._last: float | None = None
        self._rate: dict[tuple[str, str], float] = {}
        """(queue, namespace) → milli-GPU allocated since the last tick."""
        self._buckets: dict[int, dict[tuple[str, str], float]] = {}
        """minute → (queue, namespace) → GPU-seconds."""
        self.totals: dict[str, float] = defaultdict(float)
        """queue → GPU-seconds, all time (seeded from Queue status after a restart)."""
        self._decayed: dict[str, float] = defaultdict(float)
        self._max_buckets = max_buckets
        self._first: float | None = None
        """The first tick: from here on this process counts; before it, `resume` fills in."""
        self._resumed: set[str] = set()
        self.history_from: float = started
        """The earliest moment the per-minute history holds (rebuilt from pods, or the first tick)."""

    @property
    def last_tick(self) -> float | None:
        """The moment the totals count up to (written as `usageUpdatedAt` beside them)."""
        return self._last

    def resumed(self, queue: str) -> bool:
        return queue in self._resumed

    def resume(self, statuses: Mapping[str, Mapping[str, Any] | None], pods: Iterable[PodRecord]) -> dict[str, float]:
        """Continue each queue of `statuses` (leaf queue → its status on the API server) from what an
        earlier process wrote, charging the gap from the pods; once per queue, after the first tick.

        Per queue: total = `usageGPUSeconds` + the GPU-seconds its pods held between `usageUpdatedAt`
        and this process' first tick. A status without `usageUpdatedAt` and with no total (the queue
        was never counted) is charged its pods' whole runs; one with a total but no time (written by
        an older version) gets no gap. Returns the gap charged per queue (for the log)."""
        if self._first is None:
            raise RuntimeError("resume needs the first tick (it charges up to that moment)")
        first = self._first
        since: dict[str, float] = {}
        for queue, status in statuses.items():
            if queue in self._resumed:
                continue
            self._resumed.add(queue)
            status = status or {}
            total = _number(status.get("usageGPUSeconds"))
            updated = status.get("usageUpdatedAt")
            if updated:
                try:
                    since[queue] = timestamp(str(updated))
                except ValueError:
                    since[queue] = first
            else:
                since[queue] = -math.inf if total == 0 else first
            if total > 0:
                self.totals[queue] += total
        gaps: dict[str, float] = defaultdict(float)
        if not since:
            return {}
        for pod in pods:
            if pod.queue not in since or pod.role == ROLE_RESERVATION or not pod.started or not pod.node:
                continue
            milli = pod.gpus * GPU_MILLI + pod.fraction_milli
            if milli <= 0:
                continue
            # still running: up to the first tick; ended without a termination time: not charged
            end = min(pod.finished, first) if pod.finished else (pod.started if pod.terminal else first)
            if end <= pod.started:
                continue
            self._charge_history((pod.queue, pod.namespace), milli, pod.started, end)
            self.history_from = min(self.history_from, pod.started)
            seconds = end - max(pod.started, since[pod.queue])
            if seconds > 0:
                gaps[pod.queue] += milli / GPU_MILLI * seconds
        for queue, seconds in gaps.items():
            self.totals[queue] += seconds
        return dict(gaps)

    def _charge_history(self, key: tuple[str, str], milli: float, start: float, end: float) -> None:
        t = start
        while t < end:
            minute = int(t // BUCKET_SECONDS)
            stop = min(end, (minute + 1) * BUCKET_SECONDS)
            self._buckets.setdefault(minute, defaultdict(float))[key] += milli / GPU_MILLI * (stop - t)
            t = stop

    def tick(self, now: float, allocated_milli: Mapping[tuple[str, str], float],
             half_life_seconds: float | None = None) -> None:
        """Charge what was allocated since the last tick, then remember what is allocated now."""
        if self._last is not None and now > self._last:
            self._charge(self._last, now, half_life_seconds)
        if self._first is None:
            self._first = now
            self.history_from = min(self.history_from, now)
        self._last = now
        self._rate = {k: v for k, v in allocated_milli.items() if v > 0}

    def _charge(self, start: float, end: float, half_life_seconds: float | None) -> None:
        seconds = end - start
        if half_life_seconds:
            factor = math.exp(-math.log(2) * seconds / half_life_seconds)
            for queue in list(self._decayed):
                self._decayed[queue] *= factor
        for key, milli in self._rate.items():  # split across minute boundaries
            self._charge_history(key, milli, start, end)
        for (queue, _ns), milli in self._rate.items():
            self.totals[queue] += milli / GPU_MILLI * seconds
            self._decayed[queue] += milli * seconds
        if len(self._buckets) > self._max_buckets:
            for minute in sorted(self._buckets)[: len(self._buckets) - self._max_buckets]:
                del self._buckets[minute]

    def decayed_milli_seconds(self) -> dict[str, float]:
        """Per queue: milli-GPU-seconds with exponential decay (for the core's time-based fair share)."""
        return dict(self._decayed)

    def report(self, start: float, end: float, by: str = "queue") -> list[UsageRow]:
        """GPU-seconds per queue (`by="queue"`) or namespace in [start, end), at minute resolution: a
        minute the window covers in part counts in proportion (its GPU-seconds spread evenly over it)."""
        if by not in ("queue", "namespace"):
            raise ValueError(f"by must be queue or namespace, not {by!r}")
        sums: dict[str, float] = defaultdict(float)
        for minute, bucket in self._buckets.items():
            lo, hi = float(minute * BUCKET_SECONDS), float((minute + 1) * BUCKET_SECONDS)
            if self._last is not None and lo <= self._last < hi:
                hi = self._last  # the current minute holds only what was counted so far
            overlap = max(0.0, min(hi, end) - max(lo, start))
            if overlap <= 0:
                continue
            share = min(1.0, overlap / (hi - lo)) if hi > lo else 1.0
            for (queue, ns), seconds in bucket.items():
                sums[queue if by == "queue" else ns] += seconds * share
        return [UsageRow(k, v) for k, v in sorted(sums.items())]

    @property
    def covered_from(self) -> float:
        """From here on the per-minute history is complete (before: rebuilt from the pods, see above)."""
        return self._first if self._first is not None else self.started


def rfc3339_precise(seconds: float) -> str:
    """RFC 3339 with milliseconds (`usageUpdatedAt`: the gap after it is charged to the second)."""
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value)
