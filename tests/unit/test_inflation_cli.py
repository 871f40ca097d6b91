"""`leitstand simulate inflation` on a tiny generated trace: JSON shape, table and plot."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer
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


def flat(output: str) -> str:
    """The output with rich's boxes and line wrapping flattened (messages are checked word for word)."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--seeds", "9-1"], ["--seeds", "range 9-1 is empty", "1-9"]),
        (["--seeds", "x-3"], ["--seeds", "'x-3' is not a seed"]),
        (["--seeds", ","], ["--seeds", "holds no seed"]),
        (["--policy", ","], ["--policy", "no policy given"]),
        (["--policy", "fgd,worstfit"], ["--policy", "'worstfit'", "BestFit"]),
    ],
)
def test_a_bad_option_is_named_with_its_fix(tmp_path: Path, args: list[str], expected: list[str]) -> None:
    nodes, pods = write_trace(tmp_path)
    result = CliRunner().invoke(simulate_app, ["inflation", "--nodes", str(nodes), "--pods", str(pods), *args])
    text = flat(result.output)
    assert result.exit_code == 2, text
    assert "Traceback" not in text and not isinstance(result.exception, (KeyError, ValueError)), text
    for words in expected:
        assert words in text, text


@pytest.mark.parametrize(
    ("which", "content", "expected"),
    [
        ("nodes", "name,cpu_milli,memory_mib,gpu\nn-0,64000,262144,2\n", ["nodes.csv, line 1", "'sn' missing"]),
        ("nodes", "sn,cpu_milli,memory_mib,gpu\nn-0,64000,262144,-2\n", ["line 2", "'gpu'", "below 0"]),
        ("nodes", "sn,cpu_milli,memory_mib,gpu\nn-0,64000,262144,0\n", ["no node has a GPU"]),
        ("pods", "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np-0,1000,1024,1,\np-1,,1024,1,500\n",
         ["line 3", "'cpu_milli'", "missing"]),
        ("pods", "name,cpu_milli,memory_mib,gpu_milli\np-0,1000,1024,500\n", ["line 1", "'num_gpu' missing"]),
        ("pods", "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np-0,1000,1024,1,half\n", ["line 2", "'gpu_milli'"]),
        ("pods", "\x89PNG\r\n\x1a\n", ["line 1", "'name'"]),
    ],
    ids=["no-sn", "negative-gpus", "no-gpus", "missing-cpu", "no-num-gpu", "bad-milli", "not-csv"],
)
def test_a_malformed_trace_file_is_named_with_line_and_column(
    tmp_path: Path, which: str, content: str, expected: list[str]
) -> None:
    nodes, pods = write_trace(tmp_path)
    (nodes if which == "nodes" else pods).write_text(content)
    result = CliRunner().invoke(simulate_app, ["inflation", "--nodes", str(nodes), "--pods", str(pods)])
    text = flat(result.output)
    assert result.exit_code == 2, text
    assert "Traceback" not in text and not isinstance(result.exception, (KeyError, ValueError)), text
    for words in expected:
        assert words in text, text


def test_traces_option_and_missing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEITSTAND_TRACES", raising=False)
    result = CliRunner().invoke(simulate_app, ["inflation", "--traces", str(tmp_path / "nowhere")])
    text = flat(result.output)
    assert result.exit_code == 2, text
    assert "openb_node_list_gpu_node.csv" in text and "leitstand traces fetch" in text
    result = CliRunner().invoke(simulate_app, ["inflation", "--pods", str(tmp_path / "none.csv")])
    assert result.exit_code == 2 and "--pods" in flat(result.output) and "not a file" in flat(result.output)
    # --traces is where the default files are read: a tiny trace laid out as the real one runs.
    nodes, pods = write_trace(tmp_path)
    trace_dir = tmp_path / "traces" / "alibaba-gpu-2023"
    trace_dir.mkdir(parents=True)
    nodes.rename(trace_dir / "openb_node_list_gpu_node.csv")
    pods.rename(trace_dir / "openb_pod_list_default.csv")
    args = ["inflation", "--traces", str(tmp_path / "traces"), "--policy", "fgd", "--seeds", "1", "--json"]
    result = CliRunner().invoke(simulate_app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["workload"] == "default"


def test_a_malformed_published_results_file_is_named(tmp_path: Path) -> None:
    nodes, pods = write_trace(tmp_path)
    pods = pods.rename(tmp_path / "openb_pod_list_default.csv")
    expected = tmp_path / "traces" / "alibaba-gpu-2023" / "fgd_expected_results" / "analysis_allo_discrete.csv"
    expected.parent.mkdir(parents=True)
    expected.write_text("workload,sc_policy,tune,seed,total_gpus,100\nopenb_pod_list_default,06-FGD,1.3,forty,6,95\n")
    args = ["inflation", "--traces", str(tmp_path / "traces"), "--nodes", str(nodes), "--pods", str(pods)]
    result = CliRunner().invoke(simulate_app, [*args, "--policy", "fgd", "--seeds", "1"])
    text = flat(result.output)
    assert result.exit_code == 2 and "analysis_allo_discrete.csv, line 2" in text and "'seed'" in text, text


def test_parse_seeds_refuses_a_downward_range() -> None:
    with pytest.raises(typer.BadParameter, match="lower seed first: 1-9"):
        parse_seeds("9-1")
