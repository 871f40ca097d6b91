"""The `leitstand` command: one typer app that gathers the command groups.

Called by the console script `leitstand` (pyproject). Each group lives next to what it drives
(`cluster` in `leitstand.operator.cluster.commands`, `simulate` and `bench` in
`leitstand.operator.commands`); this module only wires them together and must stay import-light.
"""

from __future__ import annotations

import typer

from leitstand.operator.cluster.commands import app as cluster_app
from leitstand.operator.commands import bench_app, simulate_app

app = typer.Typer(
    name="leitstand",
    help="Leitstand: a topology-aware GPU scheduler for multi-tenant AI factories.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(cluster_app, name="cluster", help="The local Kubernetes cluster with simulated GPU nodes.")
app.add_typer(simulate_app, name="simulate", help="Trace-driven simulations of the scheduling core.")
app.add_typer(bench_app, name="bench", help="Benchmarks that print numbers (JSON with --json).")


def main() -> None:
    app()
