"""`leitstand cluster ...`: the typer group for the local cluster (build, up, down, env, status, helm).

Mounted by `leitstand.operator.cli` as `cluster`; the e2e fixture runs it as a subprocess. Kept
import-light: the modules that do the work are imported inside each command.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="The local Kubernetes cluster with simulated GPU nodes (etcd, kube-apiserver, "
    "kube-controller-manager, optional kube-scheduler, KWOK).",
    no_args_is_help=True,
)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@app.command()
def build(
    force: Annotated[bool, typer.Option(help="Rebuild even if the binaries are current.")] = False,
    with_helm: Annotated[bool, typer.Option(help="Also build Helm (for charts/leitstand/).")] = False,
) -> None:
    """Build etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, KWOK into the cache."""
    from leitstand.operator.cluster.build import BuildError
    from leitstand.operator.cluster.build import build as run_build

    try:
        seconds = run_build(force=force, report=typer.echo)
        if with_helm:
            from leitstand.operator.cluster.helm import HELM_VERSION, ensure_helm

            typer.echo(f"build: helm v{HELM_VERSION} in {ensure_helm(report=typer.echo, force=force)}")
    except BuildError as exc:
        _fail(str(exc))
    if seconds:
        typer.echo(f"build: total {sum(seconds.values()):.0f} s")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def helm(
    ctx: typer.Context,
    sync_chart: Annotated[
        bool,
        typer.Option(help="Regenerate the chart's copies (crds/, files/, the config schema) and deploy/operator.yaml."),
    ] = False,
    check_chart: Annotated[bool, typer.Option(help="Exit 1 if any of those differs from its source.")] = False,
) -> None:
    """Helm from the cache (built from its Go module if missing): `leitstand cluster helm -- lint charts/leitstand`
    runs it with those arguments; without any, prints its path."""
    import subprocess
    import tempfile

    from leitstand.operator.cluster import helm as helm_mod
    from leitstand.operator.cluster.build import BuildError

    try:
        binary = helm_mod.ensure_helm(report=typer.echo)
        if sync_chart or check_chart:
            with tempfile.TemporaryDirectory(prefix="leitstand-helm-") as home:
                if sync_chart:
                    written = helm_mod.sync_chart(Path(home), report=typer.echo)
                    typer.echo(f"helm: chart in step with deploy/ ({len(written)} files written)")
                drift = helm_mod.chart_drift(Path(home))
            if drift:
                _fail("differs from its source (run `leitstand cluster helm --sync-chart`): " + ", ".join(drift))
            return
    except (BuildError, helm_mod.ChartError) as exc:
        _fail(str(exc))
    if not ctx.args:
        typer.echo(str(binary))
        return
    sys.exit(subprocess.run([str(binary), *ctx.args]).returncode)


@app.command()
def up(
    nodes: Annotated[int | None, typer.Option(help="Nodes in the default pool (8x NVIDIA-B200). [default: 4]")] = None,
    pool: Annotated[
        list[str] | None,
        typer.Option(
            help="Extra pool, repeatable: 'name=l40s,count=16,gpus=2,product=NVIDIA-L40S,jurisdiction=eu-fr'."
        ),
    ] = None,
    topology: Annotated[
        str | None,
        typer.Option(help="'nodes-per-rack=32,racks-per-spine=8,nodes-per-nvlink-domain=1' (any subset)."),
    ] = None,
    nodes_file: Annotated[
        Path | None,
        typer.Option(help="YAML {topology: {...}, pools: [{name, count, gpus, product, ...}]} instead of --nodes."),
    ] = None,
    with_kube_scheduler: Annotated[bool, typer.Option(help="Also run kube-scheduler (the baseline).")] = False,
) -> None:
    """Start the cluster on free loopback ports, create the GPU nodes and wait until they are Ready."""
    from leitstand.operator.cluster import controlplane
    from leitstand.operator.cluster.build import BuildError
    from leitstand.operator.cluster.credentials import PkiError
    from leitstand.operator.cluster.kubeapi import ApiError
    from leitstand.operator.cluster.layout import cache_paths
    from leitstand.operator.cluster.nodes import NodeSpecError, make_spec

    try:
        spec = make_spec(nodes, pool or [], topology, nodes_file)
        result = controlplane.up(spec, with_kube_scheduler=with_kube_scheduler, report=typer.echo)
    except (controlplane.ClusterError, BuildError, PkiError, NodeSpecError, ApiError, OSError) as exc:
        _fail(str(exc))
    times = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    typer.echo(f"up: {result.nodes} nodes Ready; {times}")
    typer.echo(
        f"up: server {result.server}; kubeconfigs in {result.run}: "
        f"{', '.join(p.name for p in result.kubeconfigs.values())}"
    )
    typer.echo(
        "Use it:\n"
        f"  export KUBECONFIG={result.kubeconfig}\n"
        f"  export PATH={cache_paths().bin}:$PATH   # kubectl v1.34 built alongside\n"
        "  kubectl get nodes -L leitstand.dev/rack,nvidia.com/gpu.product\n"
        '  (or: eval "$(leitstand cluster env)"; stop with: leitstand cluster down)'
    )


@app.command()
def down() -> None:
    """Stop the processes `up` started (by recorded PID) and remove the run folder."""
    from leitstand.operator.cluster import controlplane

    try:
        controlplane.down(report=typer.echo)
    except controlplane.ClusterError as exc:
        _fail(str(exc))


@app.command()
def env(
    user: Annotated[str, typer.Option(help="admin, leitstand-operator, tenant-a or tenant-b.")] = "admin",
) -> None:
    """Print shell exports for the running cluster: eval "$(leitstand cluster env)"."""
    from leitstand.operator.cluster.layout import cache_paths, run_dir

    kubeconfig = run_dir() / f"{user}.kubeconfig"
    if not kubeconfig.is_file():
        _fail(f"no kubeconfig {kubeconfig}: is the cluster up (`leitstand cluster up`)?")
    typer.echo(f"export KUBECONFIG={kubeconfig}")
    typer.echo(f"export PATH={cache_paths().bin}:$PATH")


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Show the recorded processes and whether they still run; exit 1 if the cluster is not running."""
    from leitstand.operator.cluster import controlplane

    info = controlplane.status()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
    else:
        typer.echo(f"run folder: {info['run']}")
        if "server" in info:
            typer.echo(f"server: {info['server']}  nodes: {info['nodes']}")
            for name, proc in info["processes"].items():
                typer.echo(f"  {name:<24} pid {proc['pid']:<8} {'running' if proc['running'] else 'STOPPED'}")
        else:
            typer.echo("no cluster recorded")
    if not info["running"]:
        sys.exit(1)
