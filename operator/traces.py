"""Where the simulators find the public traces, and `leitstand traces fetch|where`.

The traces (Alibaba's GPU-sharing trace "openb" of the FGD paper, with the authors' published
results, and the Microsoft Philly job table) are not part of the repository. The simulators look in
this order, first match wins:

1. `--traces DIR` of the command;
2. `$LEITSTAND_TRACES`;
3. `../shared/traces` beside the repository, when that directory exists (a checkout next to the
   project's shared data, as CI has);
4. the cache, `$LEITSTAND_CACHE/traces` (default `~/.cache/leitstand/traces`), which
   `leitstand traces fetch` fills.

The layout is the same everywhere: `alibaba-gpu-2023/` and `philly/` under the root.

`fetch` downloads every file of `MANIFEST` from the commit it is pinned to on GitHub (or from
`--mirror`, a server with the same `owner/repo/commit/path` layout), checks its size and SHA-256,
and renames it into place only when both match; files already present with the right checksum are
kept. Stdlib only (urllib), so a proxy in `$https_proxy` is honoured.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

RAW_GITHUB = "https://raw.githubusercontent.com"
OPENB_DIR = "alibaba-gpu-2023"
PHILLY_DIR = "philly"
FETCH_HINT = (
    "run `leitstand traces fetch` (downloads them into {cache}), or point --traces / $LEITSTAND_TRACES at a copy"
)

_ALIBABA = ("alibaba/clusterdata", "7a6c496e4f4b6ce6150be8f881cb051bf2abff42", "cluster-trace-gpu-v2023/csv/")
_FGD = (
    "hkust-adsl/kubernetes-scheduler-simulator",
    "8f3d6417353c5083c6d56617f255fadd8dc306bc",
    "experiments/analysis/expected_results/",
)
_ADAPTDL = ("petuum/adaptdl", "c793c7089bd307462686339d29707925c461f9a9", "simulator/traces/")
_PHILLY_SCRIPTS = ("Qinghao-Hu/Philly-Trace-Scripts", "2d1478f0b4cd65eb2d80ca489ac2f284164b7441", "data/")


class TracesMissing(LookupError):
    """Trace files the command needs are not where it looked; the message says how to get them."""


class FetchError(RuntimeError):
    """A download that failed or did not match its checksum; nothing half-written is left behind."""


@dataclass(frozen=True, slots=True)
class TraceFile:
    """One file of the trace set: where it goes under the root and where it comes from."""

    trace: str
    """"openb" or "philly" (`fetch --only`)."""
    path: str
    """Relative to the traces root."""
    repo: str
    commit: str
    source: str
    """Path inside `repo` at `commit`."""
    size: int
    sha256: str

    def url(self, mirror: str = RAW_GITHUB) -> str:
        return f"{mirror.rstrip('/')}/{self.repo}/{self.commit}/{self.source}"


def _openb(name: str, size: int, sha256: str) -> TraceFile:
    """A file of cluster-trace-gpu-v2023/csv/ in alibaba/clusterdata (same bytes as the FGD simulator's)."""
    repo, commit, folder = _ALIBABA
    return TraceFile("openb", f"{OPENB_DIR}/{name}", repo, commit, folder + name, size, sha256)


MANIFEST: tuple[TraceFile, ...] = (
    _openb("openb_node_list_all_node.csv", 52287, "5a85c2af79c66a1efff8bbcbda430400aae56d8431370d738480967e1a9c6b15"),
    _openb("openb_node_list_gpu_node.csv", 42353, "2beca64b4d3dfa342036a34b56a495c6cef9225db836c81f541282cb1df320b5"),
    _openb("openb_pod_list_cpu0.csv", 499765, "1bc3fd9ee5c1468ccd018f624d9222746e08d59f963f66b925804734271c0eaa"),
    _openb("openb_pod_list_cpu037.csv", 518687, "8ed554026d041b15ff21ddc104d9a21dbd9a93c496262fa23ef7b5be27e220dc"),
    _openb("openb_pod_list_cpu050.csv", 525811, "747f43247bffc2b0bb081d7f61f0705ca8d390dafc0b647e642c92f3baf3ba1e"),
    _openb("openb_pod_list_cpu072.csv", 537576, "f8a2b031461b54d7b9f06d55473c2371eb3357b78a255c646bdca5e0833a8a2f"),
    _openb("openb_pod_list_cpu100.csv", 554709, "bec1c33fbdde61fd463877534ec79b393aec73e1cbb22d55fab9f166ac480982"),
    _openb("openb_pod_list_cpu200.csv", 622703, "b7e9d8a1a601da84d6e0b4110b19ef5001be5e4796d33e7b82f166ba95161f87"),
    _openb("openb_pod_list_cpu235.csv", 651171, "87bebd4d012faa8305ce1fd82737f51cf03361aac28b75d42e34aa656d7f4ee0"),
    _openb("openb_pod_list_cpu250.csv", 663708, "134c21ff96d57533df8a37b67632972884fec9396e77cd0898ddc370cc8e607d"),
    _openb("openb_pod_list_cpu300.csv", 710698, "76528825f40ee662cb098b3b6e683c1efd9f87a0c8af7e628df1f32c639636d1"),
    _openb("openb_pod_list_default.csv", 575468, "1ee7ed79c27a3b0861cda8ddba86a004c6aba904caafa329a76ae93ca63834a8"),
    _openb(
        "openb_pod_list_gpushare100.csv", 561220, "12dbc07d6a49bf8641e2275a2ff5bf7be74b5df7d148d531e135b140b95f9a3d"
    ),
    _openb("openb_pod_list_gpushare20.csv", 574603, "9be2d0efb52e242c32e23dd184cc5fcc1983478c6c9c02cbb6b4b62925c0ffcd"),
    _openb("openb_pod_list_gpushare40.csv", 572662, "d83ce79a4eb6987524bedbb0c65e41aed3a36bf6c1b78b86234c3687a07e1d40"),
    _openb("openb_pod_list_gpushare60.csv", 566361, "d31809628128a1f24491086eda4af3e23882b9213d3ef57a56ee2d1af69492fe"),
    _openb("openb_pod_list_gpushare80.csv", 563740, "88b6649369ced40d0fde287d2498ea61ff4b05fccba8bdc95daf6042f2f8431e"),
    _openb("openb_pod_list_multigpu20.csv", 271530, "d9ec6f6c74fb980cc0b81239470c6353fceea077ea9abd610003b604c7cc2b01"),
    _openb("openb_pod_list_multigpu30.csv", 277920, "a5e479c6444b1d83eef848159cf00c3cfa13441b2d1e2c113c391b91f1cc5b11"),
    _openb("openb_pod_list_multigpu40.csv", 286202, "32c9e8731ca07ef96108aa65f2a289bb9aacb47f642ed9e3789f99b242df60eb"),
    _openb("openb_pod_list_multigpu50.csv", 297219, "206f2f5959db30ecb7c44e7f13197c8ec50b7a35558ad3777cc3662ef0fe5373"),
    # The authors' published allocation curves (all 17 workloads × 6 policies × 10 seeds).
    TraceFile(
        "openb",
        f"{OPENB_DIR}/fgd_expected_results/analysis_allo_discrete.csv",
        _FGD[0],
        _FGD[1],
        _FGD[2] + "analysis_allo_discrete.csv",
        823208,
        "e00aff5923a52d53e47c16ec9d19190de4e788c15334865a77bd46e1bd006ea1",
    ),
    # Philly: the Pollux authors' job table derived from msr-fiddle/philly-traces, and the machine
    # list with GPU counts re-derived from the utilisation log (the official one is known wrong).
    TraceFile(
        "philly",
        f"{PHILLY_DIR}/adaptdl_philly_jobs.csv",
        _ADAPTDL[0],
        _ADAPTDL[1],
        _ADAPTDL[2] + "philly.csv",
        3444496,
        "ebffb3dd1589bdf4e7bcd74496201c5ded1d557d498ee14f560463f37ec353da",
    ),
    TraceFile(
        "philly",
        f"{PHILLY_DIR}/revised_machine_list.csv",
        _PHILLY_SCRIPTS[0],
        _PHILLY_SCRIPTS[1],
        _PHILLY_SCRIPTS[2] + "revised_machine_list.csv",
        5878,
        "8662346b8cc6d4c3d80e659ec8bcdc9b32b9badd69eda61f14c47f855a99898e",
    ),
)
TRACES = ("openb", "philly")


def cache_root() -> Path:
    """`$LEITSTAND_CACHE/traces`, default `~/.cache/leitstand/traces` (where `fetch` writes)."""
    base = os.environ.get("LEITSTAND_CACHE") or str(Path.home() / ".cache" / "leitstand")
    return Path(base).expanduser() / "traces"


def beside_repo() -> Path:
    """`../shared/traces` next to the repository root (this file is `<repo>/operator/traces.py`)."""
    return Path(__file__).resolve().parents[1].parent / "shared" / "traces"


def resolve_root(option: Path | None = None) -> Path:
    """The traces root a command uses (order in the module docstring)."""
    if option is not None:
        return option.expanduser()
    env = os.environ.get("LEITSTAND_TRACES")
    if env:
        return Path(env).expanduser()
    beside = beside_repo()
    if beside.is_dir():
        return beside
    return cache_root()


def require(root: Path, files: Iterable[Path]) -> None:
    """Raise `TracesMissing` naming every file of `files` that does not exist, and how to get it."""
    missing = [f for f in files if not f.is_file()]
    if missing:
        names = ", ".join(str(f) for f in missing)
        raise TracesMissing(
            f"trace file{'s' if len(missing) > 1 else ''} not found: {names} (traces root {root}); "
            + FETCH_HINT.format(cache=cache_root())
        )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def selected(only: Sequence[str] | None) -> list[TraceFile]:
    """The manifest entries of the named traces (all for None); unknown names raise ValueError."""
    names = list(only) if only else list(TRACES)
    unknown = [n for n in names if n not in TRACES]
    if unknown:
        raise ValueError(f"unknown trace {', '.join(map(repr, unknown))}; choose from {', '.join(TRACES)}")
    return [f for f in MANIFEST if f.trace in names]


def fetch(
    dest: Path,
    files: Sequence[TraceFile],
    *,
    mirror: str = RAW_GITHUB,
    timeout: float = 30.0,
    report: Callable[[str], None] = lambda _line: None,
) -> dict[str, int]:
    """Download `files` into `dest` (checksums in the module docstring); counts of kept/fetched.

    Raises `FetchError` at the first file that cannot be downloaded or does not match; files fetched
    before it stay (they are verified), the failing one leaves no trace.
    """
    counts = {"kept": 0, "fetched": 0}
    for entry in files:
        target = dest / entry.path
        if target.is_file() and target.stat().st_size == entry.size and sha256_of(target) == entry.sha256:
            counts["kept"] += 1
            report(f"ok       {entry.path} (present, checksum matches)")
            continue
        url = entry.url(mirror)
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        digest = hashlib.sha256()
        size = 0
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
                for block in iter(lambda: response.read(1 << 20), b""):
                    digest.update(block)
                    size += len(block)
                    out.write(block)
        except urllib.error.HTTPError as err:
            part.unlink(missing_ok=True)
            raise FetchError(
                f"{url} answered HTTP {err.code} ({err.reason}) for {entry.path}; the pinned commit may "
                f"have moved out of reach: check the URL in a browser, or copy the file into {dest} by hand"
            ) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as err:
            part.unlink(missing_ok=True)
            reason = getattr(err, "reason", None) or err
            raise FetchError(
                f"cannot download {url} ({reason}): the network or that host is unreachable from here. "
                f"Retry with internet access (a proxy in $https_proxy is used), use --mirror URL for a "
                f"mirror with the same owner/repo/commit/path layout, or copy the trace files into {dest} "
                f"(layout: {OPENB_DIR}/..., {PHILLY_DIR}/...) or point --traces / $LEITSTAND_TRACES at a copy"
            ) from None
        got = digest.hexdigest()
        if size != entry.size or got != entry.sha256:
            part.unlink(missing_ok=True)
            raise FetchError(
                f"{url}: {size:,} bytes with SHA-256 {got}, expected {entry.size:,} bytes with {entry.sha256}; "
                f"nothing was written for {entry.path}. A cut download: retry; a changed upstream file: "
                f"report it (the manifest pins {entry.repo}@{entry.commit[:12]})"
            )
        part.replace(target)
        counts["fetched"] += 1
        report(f"fetched  {entry.path} ({size:,} bytes, checksum ok)")
    return counts


# -- the CLI ----------------------------------------------------------------------------------------

traces_app = typer.Typer(no_args_is_help=True)


def _only(text: str) -> list[TraceFile]:
    try:
        return selected([t.strip().lower() for t in text.split(",") if t.strip()])
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--only") from None


@traces_app.command("fetch")
def fetch_command(
    only: Annotated[str, typer.Option(help="Which traces, comma-separated: openb, philly.")] = "openb,philly",
    dest: Annotated[
        Path | None, typer.Option(help="Download into this directory [default: $LEITSTAND_CACHE/traces].")
    ] = None,
    mirror: Annotated[
        str, typer.Option(help="Base URL serving owner/repo/commit/path (default: raw GitHub).")
    ] = RAW_GITHUB,
    timeout: Annotated[float, typer.Option(min=1.0, help="Seconds to wait for a server before giving up.")] = 30.0,
) -> None:
    """Download the public openb and Philly trace files (pinned commits, SHA-256 checked) into the cache."""
    files = _only(only)
    if not mirror.startswith(("http://", "https://")):
        raise typer.BadParameter(f"{mirror!r} is not an http(s) URL", param_hint="--mirror")
    target = (dest or cache_root()).expanduser()
    try:
        counts = fetch(target, files, mirror=mirror, timeout=timeout, report=typer.echo)
    except FetchError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    except OSError as err:
        message = f"error: cannot write into {target}: {err.strerror}; pass --dest DIR"
        typer.secho(message, fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    typer.echo(f"traces in {target}: {counts['fetched']} fetched, {counts['kept']} already present")
    if dest is not None or resolve_root() != target:
        typer.echo(f"the simulators read {resolve_root()}; use --traces {target} or LEITSTAND_TRACES={target}")


@traces_app.command("where")
def where_command(
    traces: Annotated[Path | None, typer.Option(help="Check this directory instead of the default.")] = None,
) -> None:
    """Which traces directory the simulators use, and which known files are there (checksums checked)."""
    root = resolve_root(traces)
    typer.echo(f"traces root: {root}")
    bad = 0
    for entry in MANIFEST:
        path = root / entry.path
        if not path.is_file():
            state = "missing"
        elif sha256_of(path) != entry.sha256:
            state = "differs"  # e.g. a trimmed copy; the simulators still read it
        else:
            state = "ok"
        bad += state != "ok"
        typer.echo(f"  {state:<8} {entry.path}")
    if bad:
        typer.echo(f"{bad} file(s) missing or different; " + FETCH_HINT.format(cache=cache_root()))
