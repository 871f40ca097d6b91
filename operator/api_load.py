"""Load on the read API, and the experiment of issue 7's closing note: API latency under load while a
burst of TrainingJobs is scheduled, and the scheduling cycle time with and without that load.

Not a test and not part of `leitstand`: numbers only, run by hand (docs/http-api.md has the results).

    python -m leitstand.operator.api_load load --server http://127.0.0.1:8080 --token T --clients 200 --seconds 30
    python -m leitstand.operator.api_load burst --nodes 128 --jobs 1000 --clients 200 --rounds 2

`load`: N clients on loopback, each a keep-alive connection sending GETs one after the other (closed
loop) over a mix of paths for T seconds; prints requests per second, p50/p90/p99/max latency and the
statuses. `burst`: on the local cluster (the running one, or one started here with `--nodes` 8-GPU
nodes and stopped at the end), `leitstand run` as `leitstand-operator` with its API on a free port;
then rounds, alternating without and with load: delete everything, (start `load` as a second process
and let it ramp up,) submit `--jobs` one-GPU TrainingJobs as admin, wait until every one shows phase
Running, and read the operator's cycle lines of that window (each cycle's observe + follow + decide +
apply + status). Everything started is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from leitstand.operator.bench_operator import percentiles as bench_percentiles

DEFAULT_PATHS = (
    "/v1/queues",
    "/v1/jobs?limit=50",
    "/v1/jobs/leitstand-bench/s-0001",
    "/v1/decisions?limit=50",
    "/v1/topology",
)
"""What a dashboard and a few terminals ask: queue table, a page of jobs, one job, the audit tail, topology."""


def percentiles(values: list[float]) -> dict[str, float]:
    """`bench_operator.percentiles` (one definition) rounded to 0.01, plus the mean."""
    stats = {k: round(v, 2) for k, v in bench_percentiles(values).items()}
    if values:
        stats["mean"] = round(sum(values) / len(values), 2)
    return stats


# -- load -----------------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    clients: int
    seconds: float
    requests: int = 0
    per_second: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    per_path_p99_ms: dict[str, float] = field(default_factory=dict)
    healthz_ms: dict[str, float] = field(default_factory=dict)
    """/healthz ten times a second beside the load: it is not gated, so it measures how quickly the
    operator's main loop gets to a new request at all (the loop the scheduler runs on)."""


async def hammer(server: str, token: str | None, clients: int, seconds: float,
                 paths: tuple[str, ...] = DEFAULT_PATHS) -> LoadResult:
    """`clients` closed-loop clients for `seconds`: latency of every answered request, in ms."""
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    latencies: list[float] = []
    by_path: dict[str, list[float]] = {p: [] for p in paths}
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=clients + 1, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:

        async def client(index: int) -> None:
            i = index
            while time.monotonic() < deadline:
                path = paths[i % len(paths)]
                i += 1
                start = time.perf_counter()
                try:
                    async with session.get(server + path) as response:
                        await response.read()
                        status = response.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors[type(exc).__name__] += 1
                    await asyncio.sleep(0.05)
                    continue
                ms = (time.perf_counter() - start) * 1000
                latencies.append(ms)
                by_path[path].append(ms)
                statuses[str(status)] += 1

        probes: list[float] = []

        async def probe() -> None:
            while time.monotonic() < deadline:
                start = time.perf_counter()
                try:
                    async with session.get(server + "/healthz") as response:
                        await response.read()
                    probes.append((time.perf_counter() - start) * 1000)
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.1)

        started = time.monotonic()
        await asyncio.gather(probe(), *(client(i) for i in range(clients)))
        took = time.monotonic() - started
    return LoadResult(
        clients=clients, seconds=round(took, 2), requests=len(latencies),
        per_second=round(len(latencies) / took, 1) if took else 0.0, latency_ms=percentiles(latencies),
        statuses=dict(statuses), errors=dict(errors),
        per_path_p99_ms={p: percentiles(v).get("p99", 0.0) for p, v in by_path.items()},
        healthz_ms=percentiles(probes),
    )


# -- the burst experiment -----------------------------------------------------------------------------------


_LINE_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}),(\d{3}) ")
_CYCLE = re.compile(r"cycle (\S+): (\d+) bound, (\d+) evicted, (\d+) pending, (\d+) running; (.*)$")
_PHASE = re.compile(r"(\w+)=([0-9.]+)ms")
TOP_PHASES = ("observe", "follow", "decide", "apply", "status")


def line_time(line: str) -> float | None:
    """Unix seconds of a text log line ("2026-12-05 21:42:28,548 INFO ..."; local time)."""
    match = _LINE_TIME.match(line)
    if not match:
        return None
    return time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")) + int(match.group(2)) / 1000


def cycles_of(log_text: str, *, jobs: int = 0, since: float = 0.0) -> dict[str, Any]:
    """The operator's INFO cycle lines (cycles that bound or evicted): count, binds, per cycle the sum of
    its top-level phases and its decide phase in ms, and when the binds reached `jobs` (seconds after
    `since`, Unix time)."""
    totals: list[float] = []
    decide: list[float] = []
    binds = 0
    all_bound: float | None = None
    for line in log_text.splitlines():
        match = _CYCLE.search(line)
        if not match:
            continue
        phases = {name: float(ms) for name, ms in _PHASE.findall(match.group(6))}
        totals.append(sum(phases.get(p, 0.0) for p in TOP_PHASES))
        decide.append(phases.get("decide", 0.0))
        binds += int(match.group(2))
        at = line_time(line)
        if jobs and all_bound is None and binds >= jobs and at is not None:
            all_bound = round(at - since, 2)
    return {"cycles": len(totals), "jobs_bound": binds, "all_bound_seconds": all_bound,
            "cycle_ms": percentiles(totals), "decide_ms": percentiles(decide)}


@dataclass
class Round:
    load: bool
    jobs: int
    burst_seconds: float | None
    """From the first submission until every job shows phase Running (None: not within the timeout); the
    time until every job was bound is `cycles["all_bound_seconds"]`."""
    cycles: dict[str, Any]
    api: dict[str, Any] | None
    load_covered_burst: bool | None


_BUCKET = re.compile(r'^leitstand_cycle_duration_seconds_bucket\{(?=[^}]*phase="total")[^}]*le="([^"]+)"[^}]*\} '
                     r'([0-9.eE+-]+)$')
_SUM_COUNT = re.compile(r'^leitstand_cycle_duration_seconds_(sum|count)\{phase="total"\} ([0-9.eE+-]+)$')


def cycle_histogram(metrics_text: str) -> dict[str, Any]:
    """The `leitstand_cycle_duration_seconds{phase="total"}` histogram of a /metrics scrape."""
    buckets: dict[float, float] = {}
    out: dict[str, Any] = {"sum": 0.0, "count": 0.0}
    for line in metrics_text.splitlines():
        match = _BUCKET.match(line)
        if match:
            buckets[float(match.group(1))] = float(match.group(2))  # "+Inf" parses as inf
            continue
        match = _SUM_COUNT.match(line)
        if match:
            out[match.group(1)] = float(match.group(2))
    out["buckets"] = dict(sorted(buckets.items()))
    return out


def histogram_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Cycles between two scrapes: count, mean ms, and the bucket bounds holding p50 and p99 (ms)."""
    count = float(after["count"] - before["count"])
    seconds = float(after["sum"] - before["sum"])
    bounds: dict[float, float] = {float(le): float(after["buckets"].get(le, 0.0) - before["buckets"].get(le, 0.0))
                                  for le in after["buckets"]}

    def bound(q: float) -> float | None:
        for le, n in bounds.items():
            if count and n >= q * count:
                return le * 1000
        return None

    return {"cycles": int(count), "mean_ms": round(1000 * seconds / count, 2) if count else None,
            "p50_at_most_ms": bound(0.5), "p99_at_most_ms": bound(0.99)}


async def steady(admin: Any, server: str, token: str, *, waiting: int, clients: int, seconds: float, rounds: int,
                 folder: Path, report: Any, operator_pid: int) -> list[dict[str, Any]]:
    """Cycle time like for like: `waiting` 8-GPU jobs that cannot fit keep every cycle doing the same
    work; windows of `seconds` alternate without and with load; cycle durations from the operator's
    own histogram (every cycle, not only those that bound something)."""
    import aiohttp

    from leitstand.operator.bench_operator import NAMESPACE, TJ_API, trainingjob
    from leitstand.operator.service.launcher import process_cpu_seconds

    for i in range(waiting):
        status, body = await admin.request("POST", f"{TJ_API}/namespaces/{NAMESPACE}/trainingjobs",
                                           trainingjob(f"w-{i:04d}", 1, 8))
        if status != 201:
            raise RuntimeError(f"creating w-{i:04d}: HTTP {status} {body}")
    await asyncio.sleep(10.0)  # their first cycles and status writes are over

    async def scrape() -> dict[str, Any]:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session, \
                session.get(server + "/metrics") as response:
            text = await response.text()
            if response.status != 200:
                raise RuntimeError(f"GET /metrics: HTTP {response.status} {text[:300]}")
            return cycle_histogram(text)

    windows = []
    for i in range(rounds * 2):
        load = i % 2 == 1
        out = folder / f"steady-{i}.json"
        loader = start_load(server, token, clients, seconds + 4, out) if load else None
        if loader is not None:
            await asyncio.sleep(2.0)
        before = await scrape()
        cpu0 = process_cpu_seconds(operator_pid)
        await asyncio.sleep(seconds)
        cpu1 = process_cpu_seconds(operator_pid)
        after = await scrape()
        api = None
        if loader is not None:
            await asyncio.to_thread(loader.communicate)
            api = json.loads(out.read_text())
        window = {"load": load, **histogram_delta(before, after),
                  "operator_cpu_cores": round((cpu1 - cpu0) / seconds, 2),
                  "loadavg_1m": float(Path("/proc/loadavg").read_text().split()[0]), "api": api}
        windows.append(window)
        report(f"  steady, {waiting} waiting, {'with' if load else 'without'} load: {window['cycles']} cycles, mean "
               f"{window['mean_ms']} ms, p50 <= {window['p50_at_most_ms']} ms, p99 <= {window['p99_at_most_ms']} ms; "
               f"operator {window['operator_cpu_cores']} cores, load average {window['loadavg_1m']}"
               + (f"; API {api['per_second']} req/s p50 {api['latency_ms'].get('p50')} ms p99 "
                  f"{api['latency_ms'].get('p99')} ms" if api else ""))
    return windows


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kubeconfig_token(path: Path) -> str:
    import yaml

    return str(yaml.safe_load(path.read_text())["users"][0]["user"]["token"])


def start_load(server: str, token: str, clients: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """`load` as a second process (its own interpreter and event loop), JSON result to `out`. At the
    lowest CPU priority: real clients run on other machines, here they share two cores with the operator,
    and a load generator taking the operator's CPU would measure the VM, not the API."""
    args = ["nice", "-n", "19", sys.executable, "-m", "leitstand.operator.api_load", "load", "--server", server,
            "--token", token, "--clients", str(clients), "--seconds", str(seconds), "--json", str(out)]
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def one_round(admin: Any, operator: Any, server: str, token: str, *, jobs: int, load: bool, clients: int,
                    load_seconds: float, timeout: float, folder: Path, report: Any) -> Round:
    from leitstand.operator.bench_operator import Submission, Workload, clean, submit_jobs, wait_statuses

    await clean(admin)
    await asyncio.sleep(2.0)  # quiet: the deletions' cycles are over
    loader = None
    out = folder / f"load-{time.monotonic_ns()}.json"
    if load:
        loader = start_load(server, token, clients, load_seconds, out)
        await asyncio.sleep(3.0)  # ramp-up: every client connected and busy
    offset = len(operator.log_text())
    t0 = time.monotonic()
    wall0 = time.time()
    workload = Workload("single", jobs, 1, 1, jobs, "")
    await submit_jobs(admin, workload, 64, Submission())
    took = await wait_statuses(admin, jobs, t0, t0 + timeout)
    window = operator.log_text()[offset:]
    covered = None
    api = None
    if loader is not None:
        covered = loader.poll() is None  # still loading when the burst was done
        _, stderr = await asyncio.to_thread(loader.communicate)
        if loader.returncode != 0:
            raise RuntimeError(f"the load process failed: {stderr.decode(errors='replace')[-2000:]}")
        api = json.loads(out.read_text())
    result = Round(load, jobs, took, cycles_of(window, jobs=jobs, since=wall0), api, covered)
    cycle = result.cycles["cycle_ms"]
    report(f"  {'with' if load else 'without'} load: {jobs} jobs bound after {result.cycles['all_bound_seconds']} s, "
           f"Running after {took} s; {result.cycles['cycles']} "
           f"cycles, cycle p50 {cycle.get('p50')} ms p99 {cycle.get('p99')} ms"
           + (f"; API {api['per_second']} req/s p50 {api['latency_ms'].get('p50')} ms "
              f"p99 {api['latency_ms'].get('p99')} ms" if api else ""))
    return result


def burst(*, nodes: int, jobs: int, clients: int, load_seconds: float, rounds: int, timeout: float,
          waiting: int = 200, steady_rounds: int = 4, steady_seconds: float = 20.0,
          report: Any = print) -> dict[str, Any]:
    from leitstand.operator.bench_operator import clean, gpu_nodes, install
    from leitstand.operator.cluster import controlplane
    from leitstand.operator.cluster.layout import run_dir
    from leitstand.operator.cluster.nodes import make_spec
    from leitstand.operator.service.kubeclient import KubeClient, load_credentials
    from leitstand.operator.service.launcher import start_operator

    folder = Path(tempfile.mkdtemp(prefix="leitstand-api-load-"))
    run_folder = run_dir()
    started = False
    if not controlplane.status().get("running"):
        report(f"starting a cluster with {nodes} nodes in {run_folder}")
        controlplane.up(make_spec(nodes, [], None), report=report)
        started = True
    port = free_port()
    server = f"http://127.0.0.1:{port}"
    config = folder / "config.yaml"
    # cycles at least every 0.5 s, so the steady windows see enough of them
    config.write_text(json.dumps({"api": {"port": port}, "cycle_max_interval_seconds": 0.5}))
    token = kubeconfig_token(run_folder / "admin.kubeconfig")
    operators: list[Any] = []

    async def main() -> tuple[list[Round], list[dict[str, Any]]]:
        admin = KubeClient(load_credentials(run_folder / "admin.kubeconfig"), max_in_flight=64)
        try:
            gpus = sum(g for _, g in await gpu_nodes(admin))
            if gpus < jobs:
                raise RuntimeError(f"{jobs} one-GPU jobs need {jobs} GPUs; the cluster has {gpus}")
            await install(admin, gpus)  # before the operator: kopf serves only resources it found at start
            await clean(admin)
            operator = start_operator(run_folder / "leitstand-operator.kubeconfig", folder / "leitstand-run.log",
                                      identity="api-load", config=config)
            operators.append(operator)
            if not await asyncio.to_thread(operator.wait_for_log, "leading as", 180):
                raise RuntimeError(f"leitstand run did not lead:\n{operator.log_text()[-3000:]}")
            results = []
            for i in range(rounds * 2):
                results.append(await one_round(
                    admin, operator, server, token, jobs=jobs, load=i % 2 == 1, clients=clients,
                    load_seconds=load_seconds, timeout=timeout, folder=folder, report=report))
            windows = await steady(admin, server, token, waiting=waiting, clients=clients, seconds=steady_seconds,
                                   rounds=steady_rounds, folder=folder, report=report,
                                   operator_pid=operator.pid) if waiting else []
            await clean(admin)
            return results, windows
        finally:
            await admin.close()

    try:
        results, windows = asyncio.run(main())
    finally:
        for operator in operators:
            operator.stop()
        if started:
            controlplane.down(report=report)
    return {"nodes": nodes, "jobs": jobs, "clients": clients, "load_seconds": load_seconds, "cores": os.cpu_count(),
            "operator_log": str(folder / "leitstand-run.log"), "rounds": [asdict(r) for r in results],
            "steady": windows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leitstand.operator.api_load", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    load = sub.add_parser("load", help="N concurrent clients against a running API for T seconds")
    load.add_argument("--server", default="http://127.0.0.1:8080")
    load.add_argument("--token", default=os.environ.get("LEITSTAND_TOKEN"))
    load.add_argument("--clients", type=int, default=200)
    load.add_argument("--seconds", type=float, default=30.0)
    load.add_argument("--paths", default=",".join(DEFAULT_PATHS))
    load.add_argument("--json", type=Path, default=None, help="write the result here (else print it)")
    bursts = sub.add_parser("burst", help="cycle time and API latency while a burst of jobs is scheduled")
    bursts.add_argument("--nodes", type=int, default=128, help="8-GPU nodes, if a cluster must be started")
    bursts.add_argument("--jobs", type=int, default=1000)
    bursts.add_argument("--clients", type=int, default=200)
    bursts.add_argument("--seconds", type=float, default=30.0, help="how long each load run lasts")
    bursts.add_argument("--rounds", type=int, default=2, help="pairs of rounds (without, with load)")
    bursts.add_argument("--timeout", type=float, default=600.0)
    bursts.add_argument("--waiting", type=int, default=200,
                        help="8-GPU jobs that cannot fit, for the steady-state cycle windows (0: skip)")
    bursts.add_argument("--steady-rounds", type=int, default=4, help="pairs of steady windows (without, with load)")
    bursts.add_argument("--steady-seconds", type=float, default=20.0)
    bursts.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.command == "load":
        result = asyncio.run(hammer(args.server.rstrip("/"), args.token, args.clients, args.seconds,
                                    tuple(p for p in args.paths.split(",") if p)))
        text = json.dumps(asdict(result), indent=2)
    else:
        outcome = burst(nodes=args.nodes, jobs=args.jobs, clients=args.clients, load_seconds=args.seconds,
                        rounds=args.rounds, timeout=args.timeout, waiting=args.waiting,
                        steady_rounds=args.steady_rounds, steady_seconds=args.steady_seconds,
                        report=lambda m: print(m, file=sys.stderr))
        text = json.dumps(outcome, indent=2)
    if args.json is not None:
        args.json.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
