"""GPU usage accounting: GPU-seconds per queue and per namespace, for showback and time-based fair share.

Called by `loop` once per cycle with what is allocated now (milli-GPU per (queue, namespace)); the
meter integrates over wall time into per-minute buckets (so `GET /v1/usage?from=&to=` can answer
any window at one-minute resolution) and running totals per queue.

Surviving restarts: each queue's total (`status.usageGPUSeconds`) is written to the Queue's status by
the loop, and a new process starts its totals from there (`seed`). The per-minute history is this
process' memory: a window reaching before the process started is answered from the totals only for
the part the process saw, and the reply says from when it has data (`covered_from`).

Time-based fair share: `decayed` gives each queue's usage with exponential decay of a half-life,
which the core takes as `Snapshot.usage_milli_seconds` when `usage_half_life_seconds` is set.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

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

    def seed(self, queue: str, gpu_seconds: float) -> None:
        """Start a queue's total from what an earlier process wrote to its status (once)."""
        if queue not in self.totals and gpu_seconds > 0:
            self.totals[queue] = gpu_seconds

    def tick(self, now: float, allocated_milli: Mapping[tuple[str, str], float],
             half_life_seconds: float | None = None) -> None:
        """Charge what was allocated since the last tick, then remember what is allocated now."""
        if self._last is not None and now > self._last:
            self._charge(self._last, now, half_life_seconds)
        self._last = now
        self._rate = {k: v for k, v in allocated_milli.items() if v > 0}

    def _charge(self, start: float, end: float, half_life_seconds: float | None) -> None:
        seconds = end - start
        if half_life_seconds:
            factor = math.exp(-math.log(2) * seconds / half_life_seconds)
            for queue in list(self._decayed):
                self._decayed[queue] *= factor
        t = start
        while t < end:  # split across minute boundaries
            minute = int(t // BUCKET_SECONDS)
            stop = min(end, (minute + 1) * BUCKET_SECONDS)
            bucket = self._buckets.setdefault(minute, defaultdict(float))
            for key, milli in self._rate.items():
                bucket[key] += milli / GPU_MILLI * (stop - t)
            t = stop
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
        """GPU-seconds per queue (`by="queue"`) or namespace in [start, end), at minute resolution."""
        if by not in ("queue", "namespace"):
            raise ValueError(f"by must be queue or namespace, not {by!r}")
        sums: dict[str, float] = defaultdict(float)
        for minute, bucket in self._buckets.items():
            lo, hi = minute * BUCKET_SECONDS, (minute + 1) * BUCKET_SECONDS
            overlap = max(0.0, min(hi, end) - max(lo, start))
            if overlap <= 0:
                continue
            share = overlap / BUCKET_SECONDS
            for (queue, ns), seconds in bucket.items():
                sums[queue if by == "queue" else ns] += seconds * share
        return [UsageRow(k, v) for k, v in sorted(sums.items())]

    @property
    def covered_from(self) -> float:
        return self.started
