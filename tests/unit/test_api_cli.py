"""`leitstand queues | jobs | why | usage` (operator/api_cli.py) against the read API of test_api.py's
world, in process: the commands' HTTP goes to FastAPI's TestClient instead of a socket."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_api import World, client_for, make_world
from test_api_auth import tenants
from typer.testing import CliRunner

from leitstand.operator import api_cli
from leitstand.operator.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def world() -> World:
    return make_world(leading=True)


@pytest.fixture
def served(world: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, dict[str, str]]]]:
    """The commands talk to the app; returns the requests they sent (URL, headers)."""
    sent: list[tuple[str, dict[str, str]]] = []
    with client_for(world, tenants()) as client:

        def transport(url: str, headers: Any) -> api_cli.Reply:
            sent.append((url, dict(headers)))
            parts = urllib.parse.urlsplit(url)
            reply = client.get(f"{parts.path}?{parts.query}" if parts.query else parts.path, headers=dict(headers))
            return api_cli.Reply(reply.status_code, reply.headers.get("content-type", ""), reply.content)

        monkeypatch.setattr(api_cli, "transport", transport)
        monkeypatch.setenv("COLUMNS", "240")
        monkeypatch.delenv("LEITSTAND_SERVER", raising=False)
        monkeypatch.delenv("LEITSTAND_TOKEN", raising=False)
        yield sent


def run(*args: str) -> Any:
    result = runner.invoke(app, list(args))
    return result


def test_queues_prints_the_tree_and_hides_what_the_caller_may_not_see(served: list[Any]) -> None:
    result = run("queues", "--token", "token-a", "--window", "3600")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    org = next(line for line in lines if " org " in f" {line} ")
    assert "32" in org and "hidden" in org  # org admits tenant-b too: no usage for tenant-a
    tenant_a = next(line for line in lines if "  tenant-a" in line)
    # 8 GPUs × 790 s: 600 s counted, 190 s before (its pod started at NOW - 190, usage.resume)
    assert "1.76" in tenant_a and "1 / 8 GPUs" in tenant_a  # one job waits for 8
    assert served[0][0] == "http://127.0.0.1:8080/v1/queues?window=3600"
    assert served[0][1]["Authorization"] == "Bearer token-a"


def test_jobs_filters_and_json(served: list[Any]) -> None:
    result = run("jobs", "--token", "admin-token", "--namespace", "tenant-b", "--phase", "Pending")
    assert result.exit_code == 0, result.output
    assert "big" in result.output and "frac" in result.output and "run-1" not in result.output
    assert "jobs (3 of 3)" in result.output
    as_json = json.loads(run("jobs", "--token", "token-a", "--json").output)
    assert [j["name"] for j in as_json["items"]] == ["run-1", "wait-1"] and as_json["total"] == 2


def test_jobs_follows_continue_tokens(served: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_cli, "PAGE", 2)
    result = run("jobs", "--token", "admin-token", "--json")
    assert [f"{j['namespace']}/{j['name']}" for j in json.loads(result.output)["items"]] == [
        "tenant-a/run-1", "tenant-a/wait-1", "tenant-b/bad", "tenant-b/big", "tenant-b/frac"]
    assert sum("/v1/jobs" in url for url, _ in served) == 3
    assert "continue=tenant-a%2Fwait-1" in served[1][0]


def test_why_shows_the_reason_and_the_numbers_behind_it(served: list[Any]) -> None:
    result = run("why", "tenant-a/wait-1", "--token", "admin-token")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "QueueAtLimit" in out and "limit 8/8" in out
    assert "request: 1 × 8 GPU = 8 GPUs" in out
    assert "queue tenant-a: allocated 8, quota 8, fair share 8, limit 8" in out
    assert "room under the limit: 0 of 8 GPUs → blocks (a hard cap)" in out
    assert "room under the quota: 7.5 of 8 GPUs → over" in out  # the parent org
    assert "parent org: allocated 24.5, quota 32" in out
    assert "wholly free GPUs" in out  # the admin may read the topology


def test_why_for_a_running_job_and_as_a_tenant(served: list[Any]) -> None:
    result = run("why", "tenant-a/run-1", "--token", "token-a")
    assert result.exit_code == 0, result.output
    assert "not waiting" in result.output and "b200-0000" in result.output
    assert "reclaim (Reclaimed) by tenant-b/big" in result.output  # the preemption history
    assert "wholly free" not in run("why", "tenant-a/wait-1", "--token", "token-a").output  # no list nodes


def test_why_reports_refusals_and_bad_arguments(served: list[Any]) -> None:
    denied = run("why", "tenant-b/big", "--token", "token-a")
    assert denied.exit_code == 1 and "HTTP 403" in denied.output and "[namespace]" in denied.output
    missing = run("why", "tenant-a/nope", "--token", "token-a")
    assert missing.exit_code == 1 and "HTTP 404" in missing.output
    assert run("why", "just-a-name", "--token", "token-a").exit_code == 2
    assert "HTTP 401" in run("jobs", "--token", "forged").output


def test_usage_as_table_csv_and_json(served: list[Any]) -> None:
    table = run("usage", "--token", "admin-token", "--by", "namespace")
    # 8 GPUs × 790 s (190 s rebuilt from the pod), less 67 GPU-s the minute resolution cuts at the start of
    # the default window (it opens 10 s before the end of the pod's first minute, which holds 80 GPU-s)
    assert table.exit_code == 0 and "tenant-a" in table.output and "1.737" in table.output
    csv = run("usage", "--token", "admin-token", "--csv")
    assert csv.output.splitlines()[0] == "queue,gpu_hours,gpu_seconds"
    assert served[-1][1]["Accept"] == "text/csv"
    data = json.loads(run("usage", "--token", "token-b", "--json", "--from", "0").output)
    assert data["rows"] == [] and data["from"] == "1970-01-01T00:00:00Z"
    assert "HTTP 400" in run("usage", "--token", "admin-token", "--by", "user").output


def test_the_token_comes_from_the_kubeconfig_and_the_server_from_the_environment(
        served: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(yaml.safe_dump({
        "current-context": "c", "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": {"token": "token-b"}}],
    }))
    monkeypatch.setenv("LEITSTAND_SERVER", "http://10.0.0.7:9090")
    result = run("jobs", "--kubeconfig", str(kubeconfig), "--json")
    assert [j["namespace"] for j in json.loads(result.output)["items"]] == ["tenant-b"] * 3
    url, headers = served[-1]
    assert url.startswith("http://10.0.0.7:9090/v1/jobs") and headers["Authorization"] == "Bearer token-b"


def test_an_unreachable_server_says_where_it_looked(monkeypatch: pytest.MonkeyPatch) -> None:
    result = run("queues", "--server", "http://127.0.0.1:9", "--token", "x")
    assert result.exit_code == 1
    assert "cannot reach the Leitstand API at http://127.0.0.1:9" in result.output
