"""`leitstand queues`, `leitstand jobs`, `leitstand why NAMESPACE/JOB`, `leitstand usage`: the read API
in a terminal.

Registered by `cli.py`; each command is one or two GETs against a running `leitstand run`
(`--server`, default http://127.0.0.1:8080, or $LEITSTAND_SERVER) with the caller's own Kubernetes
token (`--token`, $LEITSTAND_TOKEN, or the current kubeconfig user's token), so a tenant sees in the
terminal exactly what the API shows it (docs/http-api.md). Tables with colour (rich), or the API's
JSON with `--json`. Nothing here reads the cluster directly or decides anything.

`why` is the command people reach for when a job waits: the pending reason and message, and the
numbers behind them — the job's request against its queue's allocation, quota, limit and fair share
(and each parent's), and, when the caller may read the topology, where the cluster has room.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any

import typer

DEFAULT_SERVER = "http://127.0.0.1:8080"
TIMEOUT_SECONDS = 15.0
PAGE = 500
PHASE_STYLE = {"Running": "green", "Pending": "yellow", "Succeeded": "blue", "Failed": "red"}


class ApiCallError(Exception):
    """The API refused (4xx/5xx with its error body) or could not be reached."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Transport = Callable[[str, Mapping[str, str]], Reply]
"""(URL, headers) → reply; urllib here, FastAPI's TestClient in the unit tests."""


def urllib_transport(url: str, headers: Mapping[str, str]) -> Reply:
    request = urllib.request.Request(url, headers=dict(headers))
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            return Reply(response.status, response.headers.get("Content-Type", ""), response.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.headers.get("Content-Type", ""), exc.read())
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ApiCallError(f"cannot reach the Leitstand API at {url.split('/v1/')[0]}: {reason}; is `leitstand run` "
                           "running there (config api.host/api.port), or pass --server") from None


transport: Transport = urllib_transport


@dataclass(frozen=True, slots=True)
class Api:
    server: str
    token: str | None

    def get(self, path: str, params: Mapping[str, Any] | None = None, accept: str = "application/json") -> Reply:
        query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v is not None})
        url = f"{self.server.rstrip('/')}{path}" + (f"?{query}" if query else "")
        headers = {"Accept": accept}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        reply = transport(url, headers)
        if reply.status >= 400:
            try:
                body = reply.json()
                text = str(body.get("detail") or body)
                if body.get("field"):
                    text += f" [{body['field']}]"
            except (ValueError, AttributeError):
                text = reply.body.decode(errors="replace")[:300]
            raise ApiCallError(f"HTTP {reply.status}: {text}", reply.status)
        return reply

    def json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.get(path, params).json()


def kubeconfig_token(kubeconfig: str | None) -> str | None:
    """The bearer token of the kubeconfig's current user (None if it authenticates otherwise)."""
    from leitstand.operator.service.kubeclient import ConfigError, load_credentials

    try:
        return load_credentials(kubeconfig).current_token()
    except ConfigError:
        return None


def connect(server: str | None, token: str | None, kubeconfig: str | None) -> Api:
    server = server or os.environ.get("LEITSTAND_SERVER") or DEFAULT_SERVER
    token = token or os.environ.get("LEITSTAND_TOKEN") or kubeconfig_token(kubeconfig)
    return Api(server, token)


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


# -- options shared by every command ------------------------------------------------------------------

ServerOption = Annotated[str | None, typer.Option(
    "--server", help=f"The API of leitstand run (default: $LEITSTAND_SERVER, else {DEFAULT_SERVER}).")]
TokenOption = Annotated[str | None, typer.Option(
    "--token", help="Bearer token (default: $LEITSTAND_TOKEN, else the current kubeconfig user's token).")]
KubeconfigOption = Annotated[str | None, typer.Option(
    "--kubeconfig", help="Kubeconfig to take the token from (default: $KUBECONFIG, else ~/.kube/config).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's JSON.")]


def console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


def hours(seconds: float) -> str:
    return f"{seconds / 3600:,.2f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def gpus(milli: int | None) -> str:
    if milli is None:
        return "∞"
    return f"{Decimal(milli) / 1000:f}".rstrip("0").rstrip(".") if milli % 1000 else str(milli // 1000)


# -- queues -------------------------------------------------------------------------------------------


def queues(
    window: Annotated[int | None, typer.Option(help="Also show usage over the last this many seconds.")] = None,
    as_json: JsonOption = False, server: ServerOption = None, token: TokenOption = None,
    kubeconfig: KubeconfigOption = None,
) -> None:
    """Queues as a tree: quota, limit, fair share, allocated, pending and running; usage where visible."""
    api = connect(server, token, kubeconfig)
    try:
        data = api.json("/v1/queues", {"window": window})
    except ApiCallError as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    from rich.table import Table

    items = {q["name"]: q for q in data["items"]}
    table = Table(title=f"queues ({'leader' if data.get('leading') else 'replica'} view)", title_justify="left")
    for column in ("QUEUE", "QUOTA", "LIMIT", "WEIGHT", "PRIO", "FAIR SHARE", "ALLOCATED", "PENDING", "RUNNING",
                   "GPU-h total", *(["GPU-h window"] if window else [])):
        table.add_column(column, justify="left" if column == "QUEUE" else "right")

    def add(name: str, depth: int) -> None:
        q = items[name]
        allocated, quota = q["allocatedMilli"], q["quotaMilli"]
        style = "red" if q["limitMilli"] is not None and allocated >= q["limitMilli"] > 0 else (
            "yellow" if allocated > quota else "green" if allocated else "")
        details = q.get("details")
        usage = details["usage"] if details else None
        row = [
            ("  " * depth) + name + ("" if q["valid"] else " [red](invalid)[/]"),
            q["quota"], q["limit"] or "-", f"{q['overQuotaWeight']:g}", str(q["priority"]),
            q["fairShare"], f"[{style}]{q['allocated']}[/]" if style else q["allocated"],
            f"{q['pendingJobs']} / {q['pendingGpus']} GPUs" if q["pendingJobs"] else "-",
            str(q["runningJobs"]),
            hours(usage["totalGpuSeconds"]) if usage else "[dim]hidden[/]",
        ]
        if window:
            row.append(hours(usage["window"]["gpuSeconds"]) if usage and usage.get("window") else "[dim]-[/]")
        table.add_row(*row)
        for child in q["children"]:
            if child in items:
                add(child, depth + 1)

    for name in sorted(items):
        if items[name]["parent"] not in items:
            add(name, 0)
    console().print(table)


# -- jobs ---------------------------------------------------------------------------------------------


def fetch_jobs(api: Api, params: dict[str, Any], limit: int) -> tuple[list[dict[str, Any]], int]:
    items: list[dict[str, Any]] = []
    total = 0
    token: str | None = None
    while len(items) < limit:
        page = api.json("/v1/jobs", {**params, "limit": min(PAGE, limit - len(items)), "continue": token})
        items.extend(page["items"])
        total = page["total"]
        token = page.get("continue")
        if not token:
            break
    return items, total


def jobs(
    queue: Annotated[str | None, typer.Option(help="Only this queue (an inner queue: its children too).")] = None,
    namespace: Annotated[str | None, typer.Option("--namespace", "-n", help="Only this namespace.")] = None,
    phase: Annotated[str | None, typer.Option(help="Pending, Running, Succeeded or Failed.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many jobs.")] = 1000,
    as_json: JsonOption = False, server: ServerOption = None, token: TokenOption = None,
    kubeconfig: KubeconfigOption = None,
) -> None:
    """TrainingJobs you may see: queue, GPUs, phase, wait, reason and where they run."""
    api = connect(server, token, kubeconfig)
    try:
        items, total = fetch_jobs(api, {"queue": queue, "namespace": namespace, "phase": phase}, limit)
    except ApiCallError as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps({"items": items, "total": total}, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"jobs ({len(items)} of {total})", title_justify="left")
    for column in ("NAMESPACE", "NAME", "QUEUE", "GPUS", "PHASE", "WAIT", "REASON", "WHERE / WHY"):
        table.add_column(column, justify="right" if column in ("GPUS", "WAIT") else "left",
                         overflow="fold" if column == "WHERE / WHY" else "ellipsis")
    for job in items:
        placement = job.get("placement")
        where = ""
        if placement and placement.get("nodes"):
            where = ", ".join(placement["nodes"][:4]) + (f" +{len(placement['nodes']) - 4}"
                                                         if len(placement["nodes"]) > 4 else "")
            if placement.get("level") and placement["level"] != "node":
                where += f" ({placement['level']} {placement['domain']})"
        elif job.get("pending"):
            where = job["pending"]["message"]
        style = PHASE_STYLE.get(job["phase"], "")
        table.add_row(job["namespace"], job["name"], job["queue"], job["gpus"], f"[{style}]{job['phase']}[/]",
                      duration(job.get("waitSeconds")), job["reason"], where)
    console().print(table)


# -- why ----------------------------------------------------------------------------------------------


def explain(job: dict[str, Any], queues_by_name: Mapping[str, dict[str, Any]],
            topology: dict[str, Any] | None) -> list[str]:
    """The lines of `leitstand why` (rich markup): reason, request, queue numbers, cluster room."""
    key = f"{job['namespace']}/{job['name']}"
    style = PHASE_STYLE.get(job["phase"], "")
    lines = [f"[bold]{key}[/]: [{style}]{job['phase']}[/] ({job['reason'] or '-'})"]
    pending = job.get("pending")
    if job["phase"] != "Pending" or pending is None:
        placement = job.get("placement")
        if job["phase"] == "Pending" and job["reason"] == "Admitted":
            lines.append("  admitted: its pods are being created and bound")
        else:
            lines.append(f"  not waiting: {job['message']}")
        if placement:
            lines.append(f"  placed on {', '.join(placement['nodes'])}"
                         + (f" ({placement['level']} {placement['domain']})"
                            if placement.get("level") not in (None, "node") else ""))
        return lines
    need = int(job["gpuMilli"])
    lines.append(f"  [yellow]{pending['code']}[/]: {pending['message']}")
    shape = (f"{job['replicas']} × {job['gpusPerReplica']} GPU" if job.get("gpusPerReplica") is not None
             else f"{job['replicas']} × {job['gpuFraction']} of a GPU" if job.get("gpuFraction") else "?")
    constraints = [f"model {job['gpuModel']}" if job.get("gpuModel") else "any model"]
    if job.get("topologyRequired"):
        constraints.append(f"one {job['topologyRequired']} (required)")
    if job.get("topologyPreferred"):
        constraints.append(f"one {job['topologyPreferred']} (preferred)")
    lines.append(f"  request: {shape} = [bold]{gpus(need)} GPUs[/], {', '.join(constraints)}, "
                 f"priority class {job.get('priorityClass') or '-'}")
    lines.append(f"  waiting {duration(job.get('waitSeconds'))} (queued at {job.get('queuedAt') or '-'})")
    name: str | None = job["queue"]
    first = True
    seen: set[str] = set()
    while name and name not in seen:
        seen.add(name)
        q = queues_by_name.get(name)
        if q is None:
            lines.append(f"  queue {name}: [dim]not visible or does not exist[/]")
            break
        allocated = int(q["allocatedMilli"])
        label = "queue" if first else "  parent"
        lines.append(f"  {label} {name}: allocated {q['allocated']}, quota {q['quota']}, fair share {q['fairShare']}, "
                     f"limit {q['limit'] or 'none'}; {q['pendingJobs']} job(s) pending for {q['pendingGpus']} GPUs")
        for what, bound, over in (
            ("limit", q["limitMilli"], "[red]blocks[/] (a hard cap)"),
            ("fair share", q["fairShareMilli"], "[yellow]over[/] (only GPUs no queue below its share wants)"),
            ("quota", q["quotaMilli"], "[yellow]over[/] (borrowed GPUs: preemptible jobs only)"),
        ):
            if bound is None:
                continue
            room = int(bound) - allocated
            mark = "[green]fits[/]" if room >= need else over
            lines.append(f"      room under the {what}: {gpus(max(room, 0))} of {gpus(need)} GPUs → {mark}")
        first = False
        name = q.get("parent")
    if topology is not None:
        lines.extend(cluster_room(job, topology))
    return lines


def cluster_room(job: dict[str, Any], topology: dict[str, Any]) -> list[str]:
    need = int(job["gpuMilli"]) // 1000
    level = job.get("topologyRequired") or "node"
    domains = [d for d in topology["domains"] if d["level"] == level]
    lines = []
    spine = [d for d in topology["domains"] if d["parent"] is None]
    free = sum(d["gpusFree"] for d in spine) if spine else sum(d["gpusFree"] for d in domains)
    lines.append(f"  cluster{' (' + job['gpuModel'] + ')' if job.get('gpuModel') else ''}: {free} wholly free GPUs "
                 "on schedulable nodes")
    if domains and level != "node":
        best = max(domains, key=lambda d: d["gpusFree"])
        lines.append(f"      the {level} with the most room: {best['name']} with {best['gpusFree']} free GPUs "
                     f"(needs {need}); largest block on one node {best['largestFreeBlock']}")
    return lines


def why(
    job: Annotated[str, typer.Argument(help="NAMESPACE/NAME of the TrainingJob.")],
    as_json: JsonOption = False, server: ServerOption = None, token: TokenOption = None,
    kubeconfig: KubeconfigOption = None,
) -> None:
    """Why a job waits: its pending reason, and the numbers behind it (queue, parents, cluster room)."""
    namespace, _, name = job.partition("/")
    if not namespace or not name or "/" in name:
        raise fail(f"expected NAMESPACE/NAME, got {job!r}", 2)
    api = connect(server, token, kubeconfig)
    try:
        detail = api.json(f"/v1/jobs/{urllib.parse.quote(namespace)}/{urllib.parse.quote(name)}")
    except ApiCallError as exc:
        raise fail(str(exc)) from None
    try:
        queue_list = api.json("/v1/queues")["items"]
    except ApiCallError:
        queue_list = []  # may not list queues: the reason alone
    topology = None
    if detail["phase"] == "Pending" and detail.get("pending"):
        try:
            topology = api.json("/v1/topology", {"model": detail.get("gpuModel")})
        except ApiCallError:
            topology = None  # may not list nodes
    if as_json:
        typer.echo(json.dumps({"job": detail, "queues": queue_list, "topology": topology}, indent=2))
        return
    out = console()
    for line in explain(detail, {q["name"]: q for q in queue_list}, topology):
        out.print(line)
    for entry in detail.get("history") or ():
        out.print(f"  [dim]{entry['time']} {entry['kind']} ({entry['reason']}) by {entry['by'] or '-'}: "
                  f"{entry['message']}[/]")


# -- usage --------------------------------------------------------------------------------------------


def usage(
    from_: Annotated[str | None, typer.Option("--from", help="Unix seconds or RFC 3339 (default: since the "
                                                             "process started).")] = None,
    to: Annotated[str | None, typer.Option(help="Unix seconds or RFC 3339 (default: now).")] = None,
    by: Annotated[str, typer.Option(help="queue or namespace.")] = "queue",
    csv: Annotated[bool, typer.Option("--csv", help="Print CSV (as the API serves it).")] = False,
    as_json: JsonOption = False, server: ServerOption = None, token: TokenOption = None,
    kubeconfig: KubeconfigOption = None,
) -> None:
    """GPU-hours per queue or namespace (showback)."""
    api = connect(server, token, kubeconfig)
    params = {"from": from_, "to": to, "by": by}
    try:
        if csv:
            sys.stdout.write(api.get("/v1/usage", params, accept="text/csv").body.decode())
            return
        data = api.json("/v1/usage", params)
    except ApiCallError as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    from rich.table import Table

    out = console()
    out.print(f"GPU-hours by {data['by']}, {data['from']} → {data['to']} "
              f"[dim](this process' per-minute history since {data['coveredFrom']})[/]")
    table = Table()
    table.add_column(data["by"].upper())
    table.add_column("GPU-HOURS", justify="right")
    total = 0.0
    for row in data["rows"]:
        table.add_row(row["key"], f"{row['gpuHours']:,.3f}")
        total += row["gpuHours"]
    table.add_row("[bold]total[/]", f"[bold]{total:,.3f}[/]")
    out.print(table)
