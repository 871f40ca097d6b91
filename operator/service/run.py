"""`leitstand run`: wire the parts of the service together and run them until stopped.

Called by the CLI (`leitstand run`), the demo and the e2e tests (as a subprocess, so `kill -9` is
real). One process, three event loops: the main loop holds the informers (Pods, Nodes,
PriorityClasses), the scheduler loop and the binder; kopf runs in its own thread for the
TrainingJob and Queue resources and forwards their events here; the Lease is renewed on a thread of
its own (`LeaseThread`), so a long cycle never makes it miss the renew deadline.

Start-up order: the HTTP API (`leitstand.operator.api`: uvicorn as a task of the main loop, `/healthz`
at once, `/readyz` once ready; every replica serves reads, leader or not), kernels compiled (a tiny
cycle: a new pod is ready in seconds when the Numba cache is warm), informers listed (the state is
synced), then the Lease; only the holder schedules, and the binder sends no write once the Lease
has run out (`Binder.may_write`). Losing the Lease ends the process at once (`os._exit`) with exit
code 3 — the next start rebuilds everything from the API server, as client-go controllers do —
before another replica could have taken it over. A graceful stop (SIGTERM) hands the Lease back and
is cut short after SHUTDOWN_SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from leitstand.operator.api import server as api_server
from leitstand.operator.api.metrics import Metrics
from leitstand.operator.service.cache import ClusterCache
from leitstand.operator.service.config import ServiceConfig
from leitstand.operator.service.handlers import KopfThread
from leitstand.operator.service.informer import Informer
from leitstand.operator.service.jobs import PriorityClassInfo
from leitstand.operator.service.kubeclient import KubeClient, load_credentials
from leitstand.operator.service.leader import LeaderElector, LeaseThread
from leitstand.operator.service.loop import Scheduler
from leitstand.operator.service.records import PREEMPTIBLE_ANNOTATION, NodeLabels, node_record, pod_record

log = logging.getLogger("leitstand.run")

EXIT_LOST_LEASE = 3
SHUTDOWN_SECONDS = 20.0
"""A graceful stop (SIGTERM) that has not ended the process by then ends it hard (exit code as
planned): Kubernetes would send SIGKILL after the pod's grace period (30 s by default) anyway."""


def warm_up() -> float:
    """Compile (or load from the Numba cache) the kernels one cycle needs; returns seconds taken."""
    from leitstand.scheduler.cycle import run_cycle
    from leitstand.scheduler.model import Job, JobId, Node, NodeName, Queue, QueueName, Snapshot, Topology

    started = time.perf_counter()
    nodes = tuple(Node(NodeName(f"n{i}"), 8, 64_000, 512_000, topology=("r0",)) for i in range(2))
    snapshot = Snapshot(
        nodes=nodes,
        queues=(Queue(QueueName("q"), quota_milli=8000),),
        pending=(Job(JobId("w/a"), QueueName("q"), replicas=2, gpus=4), Job(JobId("w/b"), QueueName("q"),
                                                                           gpu_milli=500)),
        topology=Topology(levels=("rack",)),
    )
    run_cycle(snapshot)
    return time.perf_counter() - started


def priority_class_info(raw: Mapping[str, Any]) -> PriorityClassInfo | None:
    annotations = (raw.get("metadata") or {}).get("annotations") or {}
    text = annotations.get(PREEMPTIBLE_ANNOTATION)
    preemptible = None if text is None else str(text).strip().lower() == "true"
    return PriorityClassInfo(value=int(raw.get("value", 0)), preemptible=preemptible)


async def serve(config: ServiceConfig, kubeconfig: str | None = None, identity: str | None = None) -> int:
    identity = identity or f"{socket.gethostname()}-{os.getpid()}"
    credentials = load_credentials(kubeconfig)
    client = KubeClient(credentials, max_in_flight=config.bind_concurrency)
    # The Lease and the API's token and access reviews get a small client of their own: in a burst the
    # main client has `bind_concurrency` writes in flight and thousands queued behind them (pods,
    # binds, statuses, Events), and a Lease renewal queued there can miss the renew deadline — measured:
    # a 1,000-job burst under API load lost the lease (docs/http-api.md).
    control = KubeClient(credentials, max_in_flight=8, watch_connections=2)
    cache = ClusterCache(config.core_topology)
    scheduler = Scheduler(config, client, cache)
    metrics = Metrics(scheduler, client)
    api = await api_server.start(config.api, scheduler, control, metrics=metrics.render)
    seconds = await asyncio.to_thread(warm_up)
    log.info("kernels ready in %.1f s", seconds)
    loop = asyncio.get_running_loop()

    def on_pod(kind: str, key: str, old: Any, new: Any) -> None:
        cache.on_pod(kind, key, old, new)
        scheduler.on_pod_change()

    def on_node(kind: str, key: str, old: Any, new: Any) -> None:
        cache.on_node(kind, key, old, new)
        scheduler.wake.set()

    keys = NodeLabels(
        gpu_model=config.gpu_model_label,
        node_pool=config.node_pool_label,
        jurisdiction=config.jurisdiction_label,
        topology=config.topology_labels,
        default_pool=config.default_node_pool,
    )
    informers = [
        Informer(client, "/api/v1/nodes", functools.partial(node_record, keys=keys), on_node, name="nodes"),
        Informer(client, "/api/v1/pods", functools.partial(pod_record, scheduler_name=config.scheduler_name),
                 on_pod, name="pods"),
        Informer(client, "/apis/scheduling.k8s.io/v1/priorityclasses", priority_class_info,
                 scheduler.on_priority_class, name="priorityclasses"),
    ]

    def sink(plural: str, kind: str, body: dict[str, Any]) -> None:
        handler = scheduler.on_trainingjob if plural == "trainingjobs" else scheduler.on_queue
        loop.call_soon_threadsafe(handler, kind, body)

    kopf_thread = KopfThread(sink)
    tasks = [asyncio.create_task(i.run(), name=f"informer-{i.name}") for i in informers]
    kopf_thread.start()
    await asyncio.gather(*(i.synced.wait() for i in informers))
    log.info("synced: %d nodes, %d pods, %d priority classes", len(cache.nodes), len(cache.pods),
             len(scheduler.priority_classes))
    scheduler.ready = True
    # kopf lists the custom resources on its own; give it a moment so the first cycle sees them all
    await asyncio.to_thread(kopf_thread.ready_flag.wait, 30)

    stopping = asyncio.Event()
    shutting_down = threading.Event()

    def started_leading() -> None:  # on the lease thread
        def start() -> None:
            log.info("leading as %s: scheduling", identity)
            scheduler.leading = True
            scheduler.wake.set()
        loop.call_soon_threadsafe(start)

    def stopped_leading() -> None:  # on the lease thread
        scheduler.leading = False
        if not shutting_down.is_set():
            # Like client-go controllers (klog.Fatal): end the process now, from this thread, whatever
            # the main loop is doing — a cycle may hold it for seconds, and a clean-up that waited for
            # it once hung for minutes (docs/factory.md). Writes in flight are abandoned as after a
            # kill -9; the next start (or the other replica) rebuilds from the API server.
            log.error("lost the lease %s/%s: exiting so a fresh start rebuilds from the API server",
                      config.system_namespace, config.lease_name)
            _exit_now(EXIT_LOST_LEASE)

    lease = LeaseThread(
        # its own client: the main client has `bind_concurrency` writes in flight and thousands queued
        functools.partial(KubeClient, credentials, max_in_flight=2, watch_connections=0),
        lambda lease_client: LeaderElector(
            lease_client,
            config.system_namespace,
            config.lease_name,
            identity,
            lease_seconds=config.lease_seconds,
            renew_deadline_seconds=config.renew_deadline_seconds,
            retry_seconds=config.retry_seconds,
        ),
        started_leading,
        stopped_leading,
    )
    scheduler.binder.may_write = lambda: lease.is_leader
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopping.set)
    tasks.append(asyncio.create_task(scheduler.run(), name="scheduler"))
    lease.start()
    waiter = asyncio.create_task(stopping.wait())
    done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    # Shutting down: hand the Lease back, stop serving, stop the threads. Bounded: if any of it hangs
    # (a task that ignores its cancellation, a thread that does not join), the process ends anyway.
    shutting_down.set()
    code = 0
    for task in done:
        if task in tasks and not task.cancelled() and task.exception() is not None:
            log.error("%s stopped: %r", task.get_name(), task.exception())
            code = 1
    watchdog = threading.Timer(SHUTDOWN_SECONDS, _exit_now, (code, f"shutdown took over {SHUTDOWN_SECONDS:g} s"))
    watchdog.daemon = True
    watchdog.start()
    scheduler.leading = False
    await asyncio.to_thread(lease.release, 5.0)
    if api is not None:
        await api.stop()
    for task in [*tasks, waiter]:
        task.cancel()
    await asyncio.wait([*tasks, waiter], timeout=5)
    await asyncio.to_thread(kopf_thread.stop)
    await client.close()
    await control.close()
    watchdog.cancel()
    return code


def _exit_now(code: int, why: str = "") -> None:
    """End the process at once (no clean-up, no waiting for other threads), logs flushed first."""
    if why:
        log.error("%s: exiting with code %d", why, code)
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(code)


class JsonLines(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's `fields` (the cycle's
    phase times, a decision's job and reason) for log pipelines."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def main(config: ServiceConfig, kubeconfig: str | None, identity: str | None, log_format: str = "text") -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonLines() if log_format == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger("kopf").setLevel(logging.WARNING)
    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig  # kopf's own login reads it too
    return asyncio.run(serve(config, kubeconfig, identity))
