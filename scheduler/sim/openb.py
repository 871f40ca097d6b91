"""Loading the Alibaba GPU-sharing trace ("openb", FGD / ATC'23) into the core's value types.

Node CSV (`sn,cpu_milli,memory_mib,gpu,model`) → `model.Node`s in name order; pod CSV
(`name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,...]`) → a `PodTable` (struct of arrays,
name order). The FGD protocol's per-task rules are applied here, once: a task with `num_gpu = 0`
has no GPU request (milli 0, spec ignored); otherwise milli is clamped to 0..1000.

Bad input raises `TraceFormatError` (a `ValueError`) naming the file, line and column and the fix;
`read_rows` and `Row` do that for the other trace readers too (`workloads`).

Called by `leitstand.scheduler.sim.inflation` and the CLI; reads files, never writes.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from leitstand.scheduler.model import GPU_MILLI, Node, NodeName

NODE_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu")
POD_COLUMNS = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")


class TraceFormatError(ValueError):
    """A trace file that cannot be read as asked: the message names the file, the line (1 = the
    header) and the column, and says what to fix."""


@dataclass(frozen=True, slots=True)
class Row:
    """One data row of a trace CSV, with where it sits for error messages."""

    path: Path
    line: int
    values: dict[str, str | None]

    def where(self, column: str) -> str:
        return f"{self.path}, line {self.line}, column {column!r}"

    def text(self, column: str) -> str:
        return (self.values.get(column) or "").strip()

    def required(self, column: str) -> str:
        value = self.text(column)
        if not value:
            raise TraceFormatError(f"{self.where(column)}: the value is missing; fill it in or delete the row")
        return value

    def integer(self, column: str, *, default: int | None = None, minimum: int | None = 0) -> int:
        """An integer cell (`"8"`, also `"8.0"`); empty → `default` when one is given."""
        raw = self.text(column)
        if not raw and default is not None:
            return default
        if not raw:
            self.required(column)
        try:
            number = float(raw)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number != int(number):
            raise TraceFormatError(f"{self.where(column)}: {raw!r} is not a whole number; fix the value")
        value = int(number)
        if minimum is not None and value < minimum:
            raise TraceFormatError(f"{self.where(column)}: {value} is below {minimum}; fix the value")
        return value

    def number(self, column: str, *, default: float | None = None) -> float:
        """A finite decimal cell; empty → `default` when one is given."""
        raw = self.text(column)
        if not raw and default is not None:
            return default
        if not raw:
            self.required(column)
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise TraceFormatError(f"{self.where(column)}: {raw!r} is not a number; fix the value")
        return value


def read_rows(path: str | Path, columns: Sequence[str], *, what: str) -> Iterator[Row]:
    """The data rows of a CSV file whose header has `columns` (others may follow).

    Raises `TraceFormatError` for a missing file, a missing column or a row with more cells than the
    header; values are checked by the `Row` accessors as they are read.
    """
    path = Path(path)
    try:
        handle = open(path, newline="")  # noqa: SIM115 (closed below; the errors of opening get their own message)
    except FileNotFoundError:
        raise TraceFormatError(f"{path}: no such file ({what})") from None
    except OSError as err:
        raise TraceFormatError(f"{path}: cannot be read ({err.strerror}; {what})") from None
    with handle:
        reader = csv.DictReader(handle)
        try:
            header = [h.strip() for h in reader.fieldnames or []]
        except (UnicodeDecodeError, csv.Error) as err:
            raise TraceFormatError(f"{path}, line 1: not a CSV text file ({err}); {what} expected") from None
        missing = [c for c in columns if c not in header]
        if missing:
            shown = ",".join(header[:12]) + (",..." if len(header) > 12 else "") if header else "nothing"
            raise TraceFormatError(
                f"{path}, line 1 (header): column {', '.join(repr(c) for c in missing)} missing; "
                f"{what} needs the columns {','.join(columns)} (the header has {shown})"
            )
        reader.fieldnames = header
        try:
            for values in reader:
                if None in values:
                    raise TraceFormatError(
                        f"{path}, line {reader.line_num}: {len(header) + len(values[None])} cells for "
                        f"{len(header)} columns; remove the extra cells or quote a value that holds a comma"
                    )
                yield Row(path, reader.line_num, values)
        except (UnicodeDecodeError, csv.Error) as err:
            raise TraceFormatError(f"{path}, line {reader.line_num}: not readable as CSV ({err})") from None


@dataclass(frozen=True, slots=True)
class PodTable:
    """Tasks of one pod file, sorted by name. `gpu_spec[i]` is the raw `|` list ("" = any model)."""

    names: tuple[str, ...]
    cpu_milli: NDArray[np.int64]
    memory_mib: NDArray[np.int64]
    num_gpu: NDArray[np.int64]
    gpu_milli: NDArray[np.int64]
    """Per-GPU share, 0 for CPU-only tasks."""
    gpu_spec: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def gpu_request_milli(self) -> NDArray[np.int64]:
        """Total GPU milli of each task (per-GPU milli × count)."""
        return self.gpu_milli * self.num_gpu


def load_nodes(path: str | Path) -> list[Node]:
    """Nodes of an openb node list, sorted by name (the order the protocol's tie ranks refer to)."""
    nodes: list[Node] = []
    seen: dict[str, int] = {}
    for row in read_rows(path, NODE_COLUMNS, what="an openb node list"):
        name = row.required("sn")
        if name in seen:
            first = seen[name]
            raise TraceFormatError(f"{row.where('sn')}: {name!r} again (first on line {first}); names must differ")
        seen[name] = row.line
        gpus = row.integer("gpu", default=0)
        nodes.append(
            Node(
                name=NodeName(name),
                gpus=gpus,
                cpu_milli=row.integer("cpu_milli"),
                memory_mib=row.integer("memory_mib"),
                gpu_model=row.text("model") if gpus > 0 else "",
            )
        )
    if not nodes:
        raise TraceFormatError(f"{path}: no nodes (only a header, or empty); an openb node list has one row per node")
    nodes.sort(key=lambda node: node.name)
    return nodes


def load_pods(path: str | Path) -> PodTable:
    """Every row of a pod list (whatever its phase), sorted by name, with the protocol's GPU rules."""
    rows: list[tuple[str, int, int, int, int, str]] = []
    seen: dict[str, int] = {}
    for row in read_rows(path, POD_COLUMNS, what="an openb pod list"):
        name = row.required("name")
        if name in seen:
            first = seen[name]
            raise TraceFormatError(f"{row.where('name')}: {name!r} again (first on line {first}); names must differ")
        seen[name] = row.line
        num = row.integer("num_gpu", default=0)
        milli = row.integer("gpu_milli", default=0, minimum=None)
        spec = row.text("gpu_spec")
        if num <= 0:
            num, milli, spec = 0, 0, ""
        else:
            milli = min(max(milli, 0), GPU_MILLI)
        rows.append((name, row.integer("cpu_milli"), row.integer("memory_mib"), num, milli, spec))
    if not rows:
        raise TraceFormatError(f"{path}: no tasks (only a header, or empty); an openb pod list has one row per task")
    rows.sort(key=lambda r: r[0])
    return PodTable(
        names=tuple(r[0] for r in rows),
        cpu_milli=np.array([r[1] for r in rows], dtype=np.int64),
        memory_mib=np.array([r[2] for r in rows], dtype=np.int64),
        num_gpu=np.array([r[3] for r in rows], dtype=np.int64),
        gpu_milli=np.array([r[4] for r in rows], dtype=np.int64),
        gpu_spec=tuple(r[5] for r in rows),
    )


def workload_name(pods_path: str | Path) -> str:
    """`openb_pod_list_default.csv` → "default" (the name the FGD results use, minus the prefix)."""
    stem = Path(pods_path).stem
    prefix = "openb_pod_list_"
    return stem[len(prefix) :] if stem.startswith(prefix) else stem
