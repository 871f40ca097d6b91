"""The `leitstand` command: one typer app that gathers the command groups.

Called by the console script `leitstand` (pyproject). Each group lives next to what it drives
(`cluster` in `leitstand.operator.cluster.commands`, `simulate` and `bench` in
`leitstand.operator.commands`); this module only wires them together and must stay import-light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from leitstand.operator import api_cli
from leitstand.operator.cluster.commands import app as cluster_app
from leitstand.operator.commands import bench_app, dashboard, simulate_app
from leitstand.operator.traces import traces_app

app = typer.Typer(
    name="leitstand",
    help="Leitstand: a topology-aware GPU scheduler for multi-tenant AI factories.",
    no_args_is_help=True,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"leitstand {version('leitstand')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Leitstand: a topology-aware GPU scheduler for multi-tenant AI factories."""


app.add_typer(cluster_app, name="cluster", help="The local Kubernetes cluster with simulated GPU nodes.")
app.add_typer(simulate_app, name="simulate", help="Trace-driven simulations of the scheduling core.")
app.add_typer(bench_app, name="bench", help="Benchmarks that print numbers (JSON with --json).")
app.add_typer(traces_app, name="traces", help="The public traces the simulators read: fetch them, see where they are.")
app.command("dashboard")(dashboard)
# The read API in a terminal (operator/api_cli.py): what `leitstand run` serves, as the caller may see it.
app.command("queues")(api_cli.queues)
app.command("jobs")(api_cli.jobs)
app.command("why")(api_cli.why)
app.command("usage")(api_cli.usage)


@bench_app.command("crash")
def bench_crash(
    jobs: Annotated[int, typer.Option(min=1, help="TrainingJobs in the burst.")] = 200,
    kills: Annotated[int, typer.Option(min=0, help="kill -9 of leitstand run at this many random moments.")] = 3,
    seed: Annotated[int, typer.Option(help="Seeds the job mix and the kill moments.")] = 7,
    nodes: Annotated[int, typer.Option(min=1, help="8-GPU nodes if a cluster must be started.")] = 16,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 900.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    window: Annotated[float, typer.Option(min=3, help="The kills fall at random in the first N seconds.")] = 30.0,
) -> None:
    """kill -9 of leitstand run at random moments of a job burst; every outcome checked on the API server."""
    from leitstand.operator.faults import crash

    crash(jobs=jobs, kills=kills, seed=seed, nodes=nodes, timeout=timeout, as_json=as_json, window=window)


@bench_app.command("hostile")
def bench_hostile(
    malformed: Annotated[int, typer.Option(min=0, help="Malformed TrainingJobs and Queues (half each).")] = 1000,
    hostile: Annotated[int, typer.Option(min=0, help="Valid but hostile objects (90 % TrainingJobs).")] = 1000,
    valid: Annotated[int, typer.Option(min=1, help="Ordinary one-GPU jobs, timed alone and beside the flood.")] = 100,
    seed: Annotated[int, typer.Option(help="Seeds the generated objects.")] = 11,
    nodes: Annotated[int, typer.Option(min=1, help="8-GPU nodes if a cluster must be started.")] = 16,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Bad input at volume: malformed objects refused with field names, hostile ones survived, valid ones on time."""
    from leitstand.operator.hostile import hostile_bench

    raise typer.Exit(hostile_bench(malformed, hostile, valid, seed, nodes, as_json))


@bench_app.command("factory")
def bench_factory(
    minutes: Annotated[float, typer.Option(help="Trace minutes of arrivals (the hour), run to the end.")] = 60.0,
    speed: Annotated[float, typer.Option(help="Time compression: durations and gaps divided by this.")] = 20.0,
    nodes: Annotated[int, typer.Option(min=2, help="8-GPU nodes if a cluster must be started.")] = 1250,
    research_nodes: Annotated[int, typer.Option(min=1, help="Nodes of the research consortium's pool.")] = 130,
    industry: Annotated[int, typer.Option(min=1, help="Industry tenants.")] = 12,
    seed: Annotated[int, typer.Option(help="Seeds the tenants' loads and the workload.")] = 1,
    interval: Annotated[float, typer.Option(help="Seconds between samples of the queues.")] = 5.0,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 1800.0,
    traces: Annotated[Path | None, typer.Option(help="Traces root (acme/, alibaba-gpu-2023/).")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write factory-allocation.png into this folder.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """An AI factory's shape (docs/factory.md): tenants' hour of jobs run to the end; shares, waits, CPU."""
    from leitstand.operator.bench_factory import Options, factory_bench

    raise typer.Exit(factory_bench(Options(nodes=nodes, research_nodes=research_nodes, industry=industry,
                                           minutes=minutes, speed=speed, seed=seed, interval=interval,
                                           timeout=timeout, traces=traces, plot=plot), as_json))


@app.command("run")
def run_service(
    kubeconfig: Annotated[
        str | None, typer.Option(help="Kubeconfig file [default: $KUBECONFIG, in-cluster, ~/.kube/config].")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Service configuration (YAML; topology levels, scheduler knobs).")
    ] = None,
    identity: Annotated[str | None, typer.Option(help="Lease holder identity [default: host-pid].")] = None,
    check: Annotated[
        bool, typer.Option(help="Load the configuration and compile the kernels, print the time, exit.")
    ] = False,
    log_format: Annotated[
        str, typer.Option(help="text, or json: one object per line with the cycle's fields.")
    ] = "text",
) -> None:
    """The operator: schedule TrainingJobs and Queues (and plain pods) on the cluster."""
    from leitstand.operator.service.config import ConfigError, load_config

    if log_format not in ("text", "json"):
        typer.secho(f"error: --log-format must be text or json, not {log_format!r}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    try:
        settings = load_config(config)
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    if check:
        from leitstand.operator.service.run import warm_up

        typer.echo(f"run --check: configuration ok; kernels ready in {warm_up():.2f} s")
        return
    from leitstand.operator.service.kubeclient import ConfigError as KubeConfigError
    from leitstand.operator.service.run import main as run_main

    try:
        code = run_main(settings, kubeconfig, identity, log_format)
    except KubeConfigError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    raise typer.Exit(code)


@app.command()
def demo(
    keep: Annotated[bool, typer.Option(help="Leave the cluster running afterwards.")] = False,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds of scheduling.")] = 420.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON at the end.")] = False,
) -> None:
    """The operator on the local cluster: tenants submit TrainingJobs with kubectl; a live table until done."""
    import json

    from leitstand.operator import demo as demo_mod
    from leitstand.operator.cluster import controlplane

    try:
        summary = demo_mod.run_demo(report=typer.echo, keep=keep, timeout_seconds=timeout)
    except (demo_mod.DemoError, controlplane.ClusterError) as exc:
        typer.secho(f"demo: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    if summary["unfinished"] or len(summary["succeeded"]) != len(summary["jobs"]):
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
