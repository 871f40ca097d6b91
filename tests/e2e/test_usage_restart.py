"""Showback survives a crash: a platform engineer reads tenant-a's GPU-hours from the API, `leitstand run`
is killed with SIGKILL between two of its usage writes, it stays down for a while (one of tenant-a's jobs
ends meanwhile), and is started again. The GPU-seconds the restarted process reports — the queue's total
and the per-queue window of `/v1/usage` — agree with what the pods on the API server say they held
(their `status.startTime` and container termination times), before the kill and after the restart.

Without the gap charge (docs/http-api.md, "Usage survives restarts") the total after the restart would
miss the seconds between the last status write and the new process' first cycle: here at least
(5 s + 12 s down) × 2-3 GPUs ≈ 40 GPU-seconds, far beyond the tolerance used (a second of bind-to-start
skew and one cycle per pod, 1-second timestamps).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from leitstand.operator.service.records import timestamp

from .conftest import Cluster
from .test_api import INSTALL, Served, free_port, start_api_operator, stop, token_of, training_job, wait_until

QUEUE = "usage-a"
LABEL = "leitstand.dev/e2e"
TOLERANCE_GPU_SECONDS = 10.0
SHORT_SECONDS = 35


def queue_status(cluster: Cluster) -> dict[str, Any]:
    raw = json.loads(cluster.kubectl("get", "queue", QUEUE, "-o", "json").stdout)
    return dict(raw.get("status") or {})


def pods_truth(cluster: Cluster, at: float) -> tuple[float, dict[str, tuple[float, float]]]:
    """GPU-seconds the queue's pods held up to `at`, from their own start and termination times."""
    raw = json.loads(cluster.kubectl("get", "pods", "-n", "tenant-a", "-l", f"leitstand.dev/queue={QUEUE}",
                                     "-o", "json").stdout)
    total = 0.0
    runs: dict[str, tuple[float, float]] = {}
    for pod in raw["items"]:
        gpus = int(pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
        started = timestamp(pod["status"].get("startTime"))
        finished = max((timestamp(((s.get("state") or {}).get("terminated") or {}).get("finishedAt"))
                        for s in pod["status"].get("containerStatuses") or ()), default=0.0)
        end = min(finished, at) if finished else at
        runs[pod["metadata"]["name"]] = (started, finished)
        if started:
            total += gpus * max(0.0, end - started)
    return total, runs


def reported_total(api: Served) -> float:
    return float(api.ok(f"/v1/queues/{QUEUE}")["details"]["usage"]["totalGpuSeconds"])


@pytest.fixture
def usage_world(cluster: Cluster, tmp_path: Path) -> Iterator[tuple[Cluster, Path]]:
    cluster.kubectl("apply", *[arg for path in INSTALL for arg in ("-f", str(path))])
    cluster.kubectl("wait", "--for=condition=Established", "crd/queues.leitstand.dev", "--timeout=60s")
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "leitstand.dev/v1alpha1", "kind": "Queue",
        "metadata": {"name": QUEUE, "labels": {LABEL: "usage"}},
        "spec": {"gpu": {"quota": 8}, "namespaces": ["tenant-a"]}}))
    try:
        yield cluster, tmp_path
    finally:
        cluster.kubectl("delete", "trainingjobs", "-n", "tenant-a", "u-long", "u-short", "--ignore-not-found",
                        "--wait=false")
        cluster.kubectl("delete", "pods", "-n", "tenant-a", "-l", f"leitstand.dev/queue={QUEUE}", "--grace-period=0",
                        "--force", "--ignore-not-found", check=False)
        cluster.kubectl("delete", "queue", QUEUE, "--ignore-not-found")


def test_gpu_hours_per_queue_agree_before_and_after_kill_9(usage_world: tuple[Cluster, Path]) -> None:
    cluster, folder = usage_world
    port = free_port()
    tokens = {"admin": token_of(cluster, "admin")}
    first = start_api_operator(cluster, folder, "usage-1", port)
    second = None
    try:
        api = Served(cluster, first, f"http://127.0.0.1:{port}", tokens)
        assert first.wait_for_log("leading as", timeout_seconds=120), first.log_text()[-5000:]
        submitted = time.time()
        long_job = training_job("tenant-a", "u-long", QUEUE, 2)
        short_job = training_job("tenant-a", "u-short", QUEUE, 1)
        short_job["spec"]["template"]["metadata"] = {"annotations": {"leitstand.dev/sim-duration": f"{SHORT_SECONDS}s"}}
        for job in (long_job, short_job):
            cluster.kubectl("apply", "-f", "-", user="tenant-a", stdin=json.dumps(job))

        # The short job must run at least 25 s (it ends 10 s later, while the operator is down), and the
        # last usage write must be at least 5 s old: the kill then falls between two writes.
        def time_to_kill() -> bool:
            _, runs = pods_truth(cluster, time.time())
            short = [start for name, (start, _end) in runs.items() if name.startswith("u-short")]
            updated = queue_status(cluster).get("usageUpdatedAt")
            return (bool(short) and short[0] > 0 and time.time() - short[0] >= SHORT_SECONDS - 10
                    and updated is not None and time.time() - timestamp(updated) >= 5)

        wait_until(time_to_kill, "the short job 25 s into its run and the last usage write 5 s old", 90)
        before_at = time.time()
        before = reported_total(api)
        truth_before, _ = pods_truth(cluster, before_at)
        assert before == pytest.approx(truth_before, abs=TOLERANCE_GPU_SECONDS), (before, truth_before)
        first.kill()
        written = queue_status(cluster)
        time.sleep(12)

        second = start_api_operator(cluster, folder, "usage-2", port)
        api = Served(cluster, second, f"http://127.0.0.1:{port}", tokens)
        assert second.wait_for_log("leading as", timeout_seconds=120), second.log_text()[-5000:]
        wait_until(lambda: api.get("/readyz", None).status == 200, "/readyz 200", 60)
        wait_until(lambda: "usage resumed" in second.log_text(), "the restarted process resuming usage", 30)
        after_at = time.time()
        after = reported_total(api)
        truth_after, runs = pods_truth(cluster, after_at)
        short_end = next(end for name, (_s, end) in runs.items() if name.startswith("u-short"))
        assert 0 < short_end < after_at, runs  # the short job ended while no operator was running…
        assert short_end > before_at, runs     # …after the kill
        # The restarted process continues from the status pair the dead one wrote and charges the rest.
        assert after > float(written["usageGPUSeconds"]) + 2 * (after_at - timestamp(written["usageUpdatedAt"])) - 5
        assert after == pytest.approx(truth_after, abs=TOLERANCE_GPU_SECONDS), (after, truth_after, written)
        # GPU-hours per queue over a window that starts before the kill (on a whole minute: windows
        # have minute resolution) up to now: rebuilt from the pods for the time before the restart.
        since = int(submitted) // 60 * 60
        window = {row["key"]: row["gpuSeconds"] for row in api.ok(f"/v1/usage?by=queue&from={since}")["rows"]}
        assert window[QUEUE] == pytest.approx(truth_after, abs=TOLERANCE_GPU_SECONDS), (window, truth_after)
        # And the Queue status a kubectl user reads catches up at the next write (every 15 s).
        wait_until(lambda: timestamp(queue_status(cluster).get("usageUpdatedAt")) > after_at, "a usage write", 30)
        status = queue_status(cluster)
        truth_then, _ = pods_truth(cluster, timestamp(status["usageUpdatedAt"]))
        assert float(status["usageGPUSeconds"]) == pytest.approx(truth_then, abs=TOLERANCE_GPU_SECONDS)
        print(f"\n{QUEUE} GPU-seconds (reported | from the pods): before kill -9 {before:.1f} | {truth_before:.1f}; "
              f"last status write {float(written['usageGPUSeconds']):.1f} at {written['usageUpdatedAt']}; "
              f"after restart {after:.1f} | {truth_after:.1f}; /v1/usage window {window[QUEUE]:.1f}; "
              f"next Queue status write {float(status['usageGPUSeconds']):.1f} | {truth_then:.1f}")
    finally:
        if second is not None:
            stop(second, "the restarted leitstand run")
        elif first.alive():
            first.kill()
