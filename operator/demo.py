"""`leitstand demo`: the README's main job — the operator on the local cluster, as its users meet it.

What it does, in order: start the local cluster unless one runs (etcd, kube-apiserver,
controller-manager, KWOK as the kubelets of 12 DGX-B200-like nodes in racks of four, a 4-node pool
the research consortium brought, and 2 L40S nodes in France); install the API (`deploy/`: namespace,
CRDs, priority classes; the RBAC comes with the cluster) and the sample queues
(`deploy/examples/queues.yaml`) as a platform engineer; start `leitstand run` as the
`leitstand-operator` identity (least privilege); then the tenants submit the sample TrainingJobs
from `deploy/examples/` with `kubectl` and their own tokens: first the industry tenant fills the idle
cluster far beyond its quota, then the research consortium (its reserved pool), the SME department's
two projects (whose in-quota work reclaims GPUs from industry) and a job whose data must stay in
France. A live table shows queues and jobs until every sample job has finished; then a summary. The
cluster and the operator are stopped again by recorded PID unless `--keep`.

Everything shown is read from the API server (TrainingJob and Queue status), never from the
operator's memory.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from leitstand.operator.cluster import controlplane
from leitstand.operator.cluster.kubeapi import KubeApi
from leitstand.operator.cluster.layout import cache_paths, repo_root, run_dir
from leitstand.operator.cluster.nodes import ClusterSpec, NodePool, Topology
from leitstand.operator.service.launcher import OperatorProcess, start_operator

Report = Callable[[str], None]

DEPLOY = repo_root() / "deploy"
EXAMPLES = DEPLOY / "examples"

CLUSTER = ClusterSpec(
    pools=(
        NodePool(name="b200", count=12),
        NodePool(name="research", count=4),
        NodePool(name="l40s", count=2, gpus=2, gpu_product="NVIDIA-L40S", gpu_memory_mib=46_068, cpu="64",
                 memory="512Gi", jurisdiction="eu-fr"),
    ),
    topology=Topology(nodes_per_rack=4, racks_per_spine=2),
)

WAVES: tuple[tuple[float, str], ...] = (
    (0.0, "industry-burst.yaml"),
    (0.0, "industry-train.yaml"),
    (12.0, "research-pretrain.yaml"),
    (12.0, "sme-vision-finetune.yaml"),
    (12.0, "sme-robotics-notebook.yaml"),
    (12.0, "industry-sovereign.yaml"),
)
"""(seconds after the operator leads, example file): industry borrows first; the others come after the
demo's minimum runtime (10 s, `deploy/config/demo.yaml`) so the SME projects can reclaim."""

TERMINAL = ("Succeeded", "Failed")


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and what to look at."""


def kubectl(run: Path, user: str, *args: str, stdin: str | None = None) -> str:
    binary = cache_paths().binary("kubectl")
    proc = subprocess.run(
        [str(binary), f"--kubeconfig={run / f'{user}.kubeconfig'}", *args],
        capture_output=True, text=True, input=stdin, timeout=120, check=False,
    )
    if proc.returncode != 0:
        raise DemoError(f"kubectl {' '.join(args)} (as {user}) failed: {proc.stderr.strip()}")
    return proc.stdout


def admin_api(run: Path) -> KubeApi:
    state = json.loads((run / "state.json").read_text())
    token = next(line.split(",")[0] for line in (run / "tokens.csv").read_text().splitlines() if ",admin," in line)
    return KubeApi(state["server"], token, str(run / "pki" / "ca.crt"))


def install(run: Path, report: Report) -> None:
    """The API and the sample queues, as a platform engineer applies them."""
    kubectl(run, "admin", "apply", "-f", str(DEPLOY / "namespace.yaml"), "-f", str(DEPLOY / "crds"),
            "-f", str(DEPLOY / "priorityclasses.yaml"))
    kubectl(run, "admin", "wait", "--for=condition=Established", "--timeout=60s",
            "crd/trainingjobs.leitstand.dev", "crd/queues.leitstand.dev")
    kubectl(run, "admin", "apply", "-f", str(EXAMPLES / "queues.yaml"))
    report("demo: installed CRDs, priority classes and the sample queues (kubectl apply as admin)")


def example_jobs(name: str) -> tuple[str, list[str]]:
    """(namespace = tenant user, job names) of an example file."""
    docs = [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]
    return docs[0]["metadata"]["namespace"], [d["metadata"]["name"] for d in docs]


def submit(run: Path, name: str, report: Report) -> list[str]:
    namespace, jobs = example_jobs(name)
    kubectl(run, namespace, "apply", "-f", str(EXAMPLES / name))
    report(f"demo: {namespace} submitted {name} ({len(jobs)} job{'s' if len(jobs) != 1 else ''}) with kubectl")
    return [f"{namespace}/{job}" for job in jobs]


def observe(api: KubeApi) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    jobs = api.get("/apis/leitstand.dev/v1alpha1/trainingjobs")["items"]
    queues = api.get("/apis/leitstand.dev/v1alpha1/queues")["items"]
    return jobs, queues


def render(jobs: list[dict[str, Any]], queues: list[dict[str, Any]], elapsed: float) -> Group:
    qt = Table(title=f"Queues  (t = {elapsed:5.1f} s)", title_justify="left", expand=False)
    for column in ("queue", "parent", "quota", "limit", "fair share", "allocated", "pending jobs"):
        qt.add_column(column, justify="right" if column not in ("queue", "parent") else "left")
    for q in sorted(queues, key=lambda q: (q["spec"].get("parent") or q["metadata"]["name"], q["metadata"]["name"])):
        spec, status = q["spec"], q.get("status") or {}
        gpu = spec.get("gpu") or {}
        qt.add_row(q["metadata"]["name"], spec.get("parent", ""), str(gpu.get("quota", 0)), str(gpu.get("limit", "-")),
                   status.get("fairShare", ""), status.get("allocated", ""), str(status.get("pendingJobs", "")))
    jt = Table(title="TrainingJobs", title_justify="left")
    for column in ("job", "queue", "GPUs", "phase", "reason", "preempted", "where / why"):
        jt.add_column(column)
    colours = {"Running": "green", "Succeeded": "blue", "Failed": "red", "Pending": "yellow"}
    for job in sorted(jobs, key=lambda j: (j["metadata"]["namespace"], j["metadata"]["name"])):
        status = job.get("status") or {}
        phase = status.get("phase", "")
        placement = status.get("placement") or {}
        where = (f"{placement.get('level', '')} {placement.get('domain', '')}".strip()
                 if phase == "Running" else status.get("message", ""))
        jt.add_row(f"{job['metadata']['namespace']}/{job['metadata']['name']}", job["spec"]["queue"],
                   status.get("gpus", ""), f"[{colours.get(phase, 'white')}]{phase}[/]", status.get("reason", ""),
                   str(status.get("preemptions", 0) or ""), where[:90])
    return Group(qt, jt)


def summarise(jobs: list[dict[str, Any]], submitted: list[str], seconds: float,
              operator: OperatorProcess) -> dict[str, Any]:
    from leitstand.operator.service.records import timestamp

    by_key = {f"{j['metadata']['namespace']}/{j['metadata']['name']}": j for j in jobs}
    rows: dict[str, Any] = {}
    for key in submitted:
        job = by_key.get(key)
        status = (job or {}).get("status") or {}
        created = timestamp((job or {}).get("metadata", {}).get("creationTimestamp"))
        started = timestamp(status.get("startedAt"))
        finished = timestamp(status.get("finishedAt"))
        rows[key] = {
            "queue": (job or {}).get("spec", {}).get("queue"),
            "phase": status.get("phase", "missing"),
            "reason": status.get("reason", ""),
            "message": status.get("message", ""),
            "preemptions": status.get("preemptions", 0),
            "restarts": status.get("restarts", 0),
            "first_start_after_seconds": round(started - created, 1) if started and created else None,
            "finished_after_seconds": round(finished - created, 1) if finished and created else None,
        }
    return {
        "seconds": round(seconds, 1),
        "jobs": rows,
        "finished": sorted(k for k, r in rows.items() if r["phase"] in TERMINAL),
        "unfinished": sorted(k for k, r in rows.items() if r["phase"] not in TERMINAL),
        "succeeded": sorted(k for k, r in rows.items() if r["phase"] == "Succeeded"),
        "preempted": sorted(k for k, r in rows.items() if r["preemptions"]),
        "operator": {"cpu_seconds": round(operator.cpu_seconds(), 1), "rss_mib": round(operator.rss_mib(), 1)},
    }


def run_demo(report: Report = print, *, keep: bool = False, timeout_seconds: float = 420.0,
             console: Console | None = None) -> dict[str, Any]:
    """Run the whole demo; returns the summary (what `--json` prints and the e2e test checks)."""
    console = console or Console()
    run = run_dir()
    started_cluster = False
    if not controlplane.status().get("running"):
        report(f"demo: starting the local cluster in {run} (the first run builds Kubernetes from source: "
               "about ten minutes, with progress below)")
        controlplane.up(CLUSTER, report=report)
        started_cluster = True
    operator: OperatorProcess | None = None
    try:
        install(run, report)
        log = run / "logs" / "leitstand-run.log"
        operator = start_operator(run / "leitstand-operator.kubeconfig", log, config=DEPLOY / "config" / "demo.yaml")
        if not operator.wait_for_log("leading as", timeout_seconds=120):
            raise DemoError(f"leitstand run did not start scheduling; its log ({log}):\n{operator.log_text()[-3000:]}")
        report(f"demo: leitstand run (pid {operator.pid}) is scheduling as leitstand-operator; log: {log}")
        api = admin_api(run)
        t0 = time.monotonic()
        submitted: list[str] = []
        waves = list(WAVES)
        jobs: list[dict[str, Any]] = []
        live = Live(console=console, refresh_per_second=2, transient=False) if console.is_terminal else None
        seen: dict[str, tuple[str, str]] = {}
        if live is not None:
            live.start()
        try:
            while time.monotonic() - t0 < timeout_seconds:
                while waves and waves[0][0] <= time.monotonic() - t0:
                    submitted += submit(run, waves.pop(0)[1], report if live is None else console.log)
                jobs, queues = observe(api)
                if live is not None:
                    live.update(render(jobs, queues, time.monotonic() - t0))
                else:
                    for job in jobs:
                        key = f"{job['metadata']['namespace']}/{job['metadata']['name']}"
                        status = job.get("status") or {}
                        now = (status.get("phase", ""), status.get("reason", ""))
                        if now != seen.get(key) and now[0]:
                            seen[key] = now
                            report(f"[{time.monotonic() - t0:5.1f}s] {key:<36} {now[0]:<9} {now[1]}: "
                                   f"{status.get('message', '')}")
                phases = {f"{j['metadata']['namespace']}/{j['metadata']['name']}": (j.get("status") or {}).get(
                    "phase") for j in jobs}
                if not waves and all(phases.get(k) in TERMINAL for k in submitted):
                    break
                time.sleep(1.0)
        finally:
            if live is not None:
                live.stop()
        summary = summarise(jobs, submitted, time.monotonic() - t0, operator)
    finally:
        if operator is not None:
            operator.stop()
        if started_cluster and not keep:
            controlplane.down(report=report)
    report(f"demo: {len(summary['succeeded'])} of {len(summary['jobs'])} jobs succeeded in {summary['seconds']} s; "
           f"{len(summary['preempted'])} sent back to their queue by reclaim ({', '.join(summary['preempted'])}); "
           f"operator CPU {summary['operator']['cpu_seconds']} s, RSS {summary['operator']['rss_mib']} MiB")
    for key, row in summary["jobs"].items():
        report(f"  {key:<36} {row['phase']:<9} started after {row['first_start_after_seconds']} s, "
               f"preemptions {row['preemptions']}" + (f" — {row['message']}" if row["phase"] != "Succeeded" else ""))
    return summary
