"""`leitstand simulate inflation` on a tiny generated trace: JSON shape, table and plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leitstand.operator.commands import simulate_app
from leitstand.operator.simulate_inflation import parse_seeds


def write_trace(tmp_path: Path) -> tuple[Path, Path]:
    nodes = tmp_path / "nodes.csv"
    nodes.write_text(
        "sn,cpu_milli,memory_mib,gpu,model\n"
        "node-a,64000,262144,8,G2\nnode-b,32000,131072,2,T4\nnode-c,96000,393216,4,V100M32\n"
    )
    pods = tmp_path / "openb_pod_list_tiny.csv"
    rows = ["name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec"]
    shapes = ["4000,8192,1,500,", "2000,4096,1,250,", "8000,16384,1,1000,", "16000,32768,2,1000,G2", "1000,1024,0,0,"]
    rows += [f"pod-{i:03d},{shapes[i % len(shapes)]}" for i in range(10)]
    rows += [f"pod-{i:03d},1000,1024,1,{(100, 150, 200)[i % 3]}," for i in range(10, 200)]  # fine steps
    pods.write_text("\n".join(rows) + "\n")
    return nodes, pods


def test_json_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEITSTAND_TRACES", str(tmp_path))  # no published results for this workload
    nodes, pods = write_trace(tmp_path)
    args = ["inflation", "--nodes", str(nodes), "--pods", str(pods), "--policy", "fgd,BestFit", "--seeds", "1-2"]
    result = CliRunner().invoke(simulate_app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)  # strict JSON: no NaN
    assert document["workload"] == "tiny"
    assert set(document["results"]) == {"FGD", "BestFit"}
    for entry in document["results"].values():
        assert set(entry) == {"unallocated_pct_at_100", "per_seed", "allocation_pct_by_arrived"}
        assert len(entry["per_seed"]) == 2
        assert len(entry["allocation_pct_by_arrived"]) == 131
        assert 0.0 <= entry["unallocated_pct_at_100"] <= 100.0
        assert entry["allocation_pct_by_arrived"][0] is not None


def test_table_and_plot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEITSTAND_TRACES", str(tmp_path))
    nodes, pods = write_trace(tmp_path)
    plot = tmp_path / "plot.png"
    args = ["inflation", "--nodes", str(nodes), "--pods", str(pods), "--seeds", "3", "--plot", str(plot)]
    result = CliRunner().invoke(simulate_app, args)
    assert result.exit_code == 0, result.output
    assert "leitstand" in result.output
    assert plot.stat().st_size > 0


def test_unknown_policy_is_a_usage_error(tmp_path: Path) -> None:
    nodes, pods = write_trace(tmp_path)
    args = ["inflation", "--nodes", str(nodes), "--pods", str(pods), "--policy", "worstfit"]
    result = CliRunner().invoke(simulate_app, args)
    assert result.exit_code != 0
    assert result.exit_code == 2 and "worstfit" in result.output


def test_parse_seeds() -> None:
    assert parse_seeds("42-44") == [42, 43, 44]
    assert parse_seeds("1,5-6") == [1, 5, 6]
