"""The `simulate` and `bench` command groups of the CLI, and `dashboard`.

Each command is a thin wrapper: it imports its implementation lazily (the heavy imports, numba,
matplotlib, stay out of `leitstand --help`) and prints or writes what the implementation returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

simulate_app = typer.Typer(no_args_is_help=True)
bench_app = typer.Typer(no_args_is_help=True)

from leitstand.operator.simulate_inflation import inflation  # noqa: E402

simulate_app.command("inflation")(inflation)

from leitstand.operator.bench_core import core  # noqa: E402

bench_app.command("core")(core)

from leitstand.operator.bench_operator import operator_bench  # noqa: E402

bench_app.command("operator")(operator_bench)

from leitstand.operator.faults import failover_command, nodes_command, restart_command  # noqa: E402

bench_app.command("failover")(failover_command)
bench_app.command("restart")(restart_command)
bench_app.command("nodes")(nodes_command)

from leitstand.operator.bench_e2e import e2e  # noqa: E402

bench_app.command("e2e")(e2e)

from leitstand.operator.simulate_replay import replay  # noqa: E402

simulate_app.command("replay")(replay)

from leitstand.operator.simulate_acme import acme  # noqa: E402

simulate_app.command("acme")(acme)


def dashboard(
    out: Annotated[
        Path | None,
        typer.Option(help="Write the JSON to this file (the committed one: deploy/grafana/leitstand.json); "
                     "without it, print the JSON."),
    ] = None,
) -> None:
    """The Grafana dashboard of Leitstand's Prometheus metrics, generated from code."""
    from leitstand.operator.api.dashboard import render, write

    if out is None:
        typer.echo(render(), nl=False)
    else:
        typer.echo(f"wrote {write(out)}")
