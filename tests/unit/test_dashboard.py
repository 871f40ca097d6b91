"""The Grafana dashboard (`leitstand.operator.api.dashboard`): the committed JSON is what the code
generates, and every panel's PromQL uses only series and labels that the metrics module defines.
(That every expression parses and returns data on a real Prometheus is `tests/e2e/test_prometheus.py`.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from leitstand.operator.api import dashboard
from leitstand.operator.api.metrics import SPECS, metric_sample_names
from leitstand.operator.cli import app
from leitstand.operator.cluster.layout import repo_root

COMMITTED = repo_root() / "deploy" / "grafana" / "leitstand.json"

KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
                      "group_right", "inf", "nan"})
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*\"")


def labels_of(sample: str) -> set[str]:
    for spec in SPECS:
        if sample in spec.sample_names:
            return set(spec.labels) | ({"le"} if sample.endswith("_bucket") else set())
    raise AssertionError(f"{sample} is not a series of leitstand.operator.api.metrics")


def series_names(expr: str) -> list[str]:
    """Identifiers of an expression that name series (not functions, keywords, labels or durations)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = GROUPING.sub("", text)
    names = []
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        rest = text[match.end():].lstrip()
        if rest.startswith("(") or match.group(0).lower() in KEYWORDS:
            continue  # a function (or an aggregation) or a keyword
        if match.start() > 0 and (text[match.start() - 1].isdigit() or text[match.start() - 1] == "."):
            continue  # the exponent of a number such as 1e3
        names.append(match.group(0))
    return names


def test_the_committed_dashboard_is_the_generated_one() -> None:
    assert COMMITTED.read_text() == dashboard.render(), (
        "deploy/grafana/leitstand.json is stale: run `leitstand dashboard --out deploy/grafana/leitstand.json`")


def test_leitstand_dashboard_writes_or_prints_the_json(tmp_path: Path) -> None:
    runner = CliRunner()
    printed = runner.invoke(app, ["dashboard"])
    assert printed.exit_code == 0, printed.output
    assert printed.output == dashboard.render()
    out = tmp_path / "board.json"
    written = runner.invoke(app, ["dashboard", "--out", str(out)])
    assert written.exit_code == 0, written.output
    assert out.read_text() == dashboard.render()


def test_every_expression_uses_only_series_and_labels_the_metrics_define() -> None:
    defined = metric_sample_names()
    used: set[str] = set()
    for title, expr in dashboard.expressions():
        names = series_names(expr)
        assert names, f"{title}: no series in {expr}"
        unknown = [n for n in names if n not in defined]
        assert not unknown, f"{title}: {unknown} are not defined by metrics.py ({expr})"
        used.update(names)
        available = set().union(*(labels_of(n) for n in names)) | {"__name__"}
        for name, matchers in SELECTOR.findall(expr):
            for label, _op in MATCHER.findall(matchers):
                assert label in labels_of(name), f"{title}: {name} has no label {label!r} ({expr})"
        for _clause, grouped in GROUPING.findall(expr):
            for label in filter(None, (g.strip() for g in grouped.split(","))):
                assert label in available, f"{title}: no series of {names} has label {label!r} ({expr})"
    # the dashboard shows every family at least once
    family_of = {sample: spec.name for spec in SPECS for sample in spec.sample_names}
    assert {s.name for s in SPECS} - {family_of[n] for n in used} == set()


def test_the_checker_itself_catches_strangers() -> None:
    assert series_names('sum by (queue) (rate(foo_total{queue=~"a"}[5m])) / 1e3') == ["foo_total"]
    assert series_names("histogram_quantile(0.9, sum by (le) (rate(x_bucket[$__rate_interval])))") == ["x_bucket"]
    assert series_names("a * on (queue) group_left (parent) b") == ["a", "b"]


def test_panels_have_ids_titles_datasource_and_reference_the_variables() -> None:
    board = json.loads(dashboard.render())
    panels = board["panels"]
    assert [p["id"] for p in panels] == list(range(1, len(panels) + 1))
    assert {p["type"] for p in panels} == {"row", "timeseries", "stat", "table"}
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["description"], panel
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs) and all(refs)
    names = {v["name"] for v in board["templating"]["list"]}
    assert names == {"datasource", "queue"}
    assert board["uid"] == dashboard.UID
    assert len(dashboard.expressions()) == sum(len(p["targets"]) for p in panels if p["type"] != "row")
