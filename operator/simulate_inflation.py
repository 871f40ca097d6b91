"""`leitstand simulate inflation`: the FGD paper's workload-inflation experiment on the openb trace.

Thin CLI over `leitstand.scheduler.sim.inflation`: loads the node and pod CSVs, runs every requested
policy × seed, prints a rich table (ours vs the authors' published medians when the expected-results
file has the workload) and writes a PNG of allocation vs arrived workload, or prints JSON with
`--json`. Heavy imports (numba, matplotlib) happen inside the command.

Input errors end in one message and exit code 2, never a traceback: a bad `--policy` or `--seeds`
names the option and the fix, a missing file names its path and `leitstand traces fetch` (lookup
order in `leitstand.operator.traces`), a malformed file names its line and column.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from leitstand.operator import traces as trace_files

TRACE_DIR = trace_files.OPENB_DIR
EXPECTED = "fgd_expected_results/analysis_allo_discrete.csv"


def traces_root(option: Path | None = None) -> Path:
    """The traces root (`--traces`, `$LEITSTAND_TRACES`, `../shared/traces`, the fetch cache)."""
    return trace_files.resolve_root(option)


def parse_seeds(text: str) -> list[int]:
    """`"42-51"` → 42..51; `"42,45,50-51"` → [42, 45, 50, 51]; anything else names `--seeds`."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            first, last = (int(lo), int(hi)) if sep else (int(part), int(part))
        except ValueError:
            raise typer.BadParameter(
                f"{part!r} is not a seed or a range of seeds; write e.g. 42-51 or 42,43,50-51", param_hint="--seeds"
            ) from None
        if last < first:
            raise typer.BadParameter(
                f"range {part} is empty (it runs downwards); write the lower seed first: {last}-{first}",
                param_hint="--seeds",
            )
        seeds.extend(range(first, last + 1))
    if not seeds:
        raise typer.BadParameter(f"{text!r} holds no seed; write e.g. 42-51 or 42,43", param_hint="--seeds")
    return seeds


def _input_error(message: str) -> NoReturn:
    """A missing or malformed trace file: one message, exit code 2."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def published_unallocated(expected_csv: Path, workload: str, seeds: list[int]) -> dict[str, list[float]]:
    """The authors' unallocated GPU % at 100 % arrived, per policy display name, for `seeds`."""
    from leitstand.scheduler.sim.openb import read_rows

    out: dict[str, dict[int, float]] = {}
    if not expected_csv.exists():
        return {}
    columns = ("workload", "sc_policy", "seed", "100")
    for row in read_rows(expected_csv, columns, what="the FGD authors' results (analysis_allo_discrete.csv)"):
        name = row.text("workload").removeprefix("openb_pod_list_")
        if name != workload:
            continue
        policy = row.text("sc_policy").split("-", 1)[-1]
        out.setdefault(policy, {})[row.integer("seed", minimum=None)] = round(100.0 - row.number("100"), 2)
    return {p: [v[s] for s in seeds if s in v] for p, v in out.items() if any(s in v for s in seeds)}


def inflation(
    nodes: Annotated[Path | None, typer.Option(help="Node CSV (default: the trace's GPU node list).")] = None,
    pods: Annotated[Path | None, typer.Option(help="Pod CSV (default: openb_pod_list_default.csv).")] = None,
    policy: Annotated[str, typer.Option(help="Policies, comma-separated, case-insensitive.")] = "leitstand",
    seeds: Annotated[str, typer.Option(help="Seeds: 42-51, or a comma list.")] = "42-51",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table and plot.")] = False,
    plot: Annotated[Path | None, typer.Option(help="PNG path (default out/inflation-<workload>.png).")] = None,
    traces: Annotated[
        Path | None,
        typer.Option(help="Traces directory [default: $LEITSTAND_TRACES, ../shared/traces, the fetch cache]."),
    ] = None,
) -> None:
    """Paper protocol (FGD, ATC'23): inflate the trace to 1.3× GPU capacity, arrive-only, per policy."""
    from leitstand.scheduler.codes import PolicyCode
    from leitstand.scheduler.sim import openb
    from leitstand.scheduler.sim.inflation import Workload, run_policy

    top = traces_root(traces)
    root = top / TRACE_DIR
    nodes_path = nodes or root / "openb_node_list_gpu_node.csv"
    pods_path = pods or root / "openb_pod_list_default.csv"
    try:
        codes = [PolicyCode.parse(p) for p in policy.split(",") if p.strip()]
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--policy") from None
    if not codes:
        raise typer.BadParameter("no policy given; e.g. --policy leitstand,FGD,BestFit", param_hint="--policy")
    seed_list = parse_seeds(seeds)
    for path, option in ((nodes_path, nodes), (pods_path, pods)):
        if option is not None and not path.is_file():
            raise typer.BadParameter(f"{path} is not a file", param_hint="--nodes" if option is nodes else "--pods")
    try:
        trace_files.require(top, [nodes_path, pods_path])
    except trace_files.TracesMissing as err:
        _input_error(str(err))

    workload_name = openb.workload_name(pods_path)
    try:
        node_list = openb.load_nodes(nodes_path)
        if not any(node.gpus > 0 for node in node_list):
            _input_error(f"{nodes_path}: no node has a GPU; pass a GPU node list (openb_node_list_gpu_node.csv)")
        workload = Workload.build(node_list, openb.load_pods(pods_path))
        published = published_unallocated(root / EXPECTED, workload_name, seed_list)
    except openb.TraceFormatError as err:
        _input_error(str(err))
    results: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    for code in codes:
        summary = run_policy(workload, code, seed_list)
        entry: dict[str, Any] = {
            "unallocated_pct_at_100": summary.unallocated_pct_at_100,
            "per_seed": summary.per_seed,
            "allocation_pct_by_arrived": summary.allocation_pct_by_arrived,
        }
        if published.get(code.display_name):
            entry["published"] = round(statistics.median(published[code.display_name]), 3)
        results[code.display_name] = entry
        seconds[code.display_name] = summary.seconds
    document = {"workload": workload_name, "results": _finite(results)}
    if json_out:
        typer.echo(json.dumps(document))
        return
    _print_table(document, len(seed_list), seconds)
    _write_plot(document, plot or Path("out") / f"inflation-{workload_name}.png")


def _finite(value: Any) -> Any:
    """NaN (a column no event landed near, e.g. in a tiny trace) → None, so the JSON stays strict."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _print_table(document: dict[str, Any], n_seeds: int, seconds: dict[str, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Inflation, workload {document['workload']}: unallocated GPU % at 100 % arrived")
    table.add_column("policy")
    table.add_column(f"median ({n_seeds} seeds)", justify="right")
    table.add_column("published", justify="right")
    table.add_column("Δ", justify="right")
    table.add_column("seconds", justify="right")
    for name, entry in document["results"].items():
        pub = entry.get("published")
        ours = entry["unallocated_pct_at_100"]
        table.add_row(
            name,
            "n/a" if ours is None else f"{ours:.2f}",
            "" if pub is None else f"{pub:.2f}",
            "" if pub is None or ours is None else f"{ours - pub:+.2f}",
            f"{seconds[name]:.1f}",
        )
    Console().print(table)


def _write_plot(document: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (full, zoom) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, entry in document["results"].items():
        curve = [float("nan") if v is None else v for v in entry["allocation_pct_by_arrived"]]
        full.plot(range(len(curve)), curve, label=name)
        zoom.plot(range(len(curve)), curve, label=name)
    full.plot([0, 100], [0, 100], color="grey", linewidth=0.6, linestyle=":")
    zoom.plot([0, 100], [0, 100], color="grey", linewidth=0.6, linestyle=":")
    zoom.set_xlim(80, 130)
    zoom.set_ylim(75, 100)
    for ax in (full, zoom):
        ax.set_xlabel("arrived workload, % of cluster GPU capacity")
        ax.set_ylabel("GPU allocation, %")
        ax.grid(alpha=0.3)
    full.set_title(f"FGD inflation protocol, workload {document['workload']} (median over seeds)")
    zoom.set_title("zoom: arrived 80–130 %")
    full.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    typer.echo(f"plot written to {path}")
