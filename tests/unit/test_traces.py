"""`leitstand traces fetch|where` and where the simulators look for traces (leitstand.operator.traces).

Downloads run against a local HTTP server on 127.0.0.1 (started and stopped by each test) that serves
files in the `owner/repo/commit/path` layout of raw GitHub, so nothing here needs the internet.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leitstand.operator import traces
from leitstand.operator.traces import FetchError, TraceFile, fetch, resolve_root, traces_app


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class Mirror:
    """A directory served over HTTP on 127.0.0.1 until `stop()`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, entry: TraceFile, content: bytes) -> None:
        path = self.root / entry.repo / entry.commit / entry.source
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    served = Mirror(tmp_path / "served")
    try:
        yield served
    finally:
        served.stop()


def entry(name: str, content: bytes, trace: str = "openb") -> TraceFile:
    folder = "alibaba-gpu-2023" if trace == "openb" else "philly"
    return TraceFile(
        trace, f"{folder}/{name}", "owner/repo", "c0ffee" * 6 + "c0ff", f"data/{name}", len(content),
        hashlib.sha256(content).hexdigest(),
    )


NODES = b"sn,cpu_milli,memory_mib,gpu,model\nn-0,64000,262144,8,G2\n"
JOBS = b"timestamp,duration,num_gpus,gpu_time,cluster\n2017-10-02 00:00:00,60,1,60,vc\n"


def test_fetch_downloads_checks_and_keeps(tmp_path: Path, mirror: Mirror) -> None:
    files = [entry("nodes.csv", NODES), entry("jobs.csv", JOBS, "philly")]
    for f, content in zip(files, (NODES, JOBS), strict=True):
        mirror.publish(f, content)
    dest = tmp_path / "cache"
    lines: list[str] = []
    assert fetch(dest, files, mirror=mirror.url, report=lines.append) == {"kept": 0, "fetched": 2}
    assert (dest / "alibaba-gpu-2023" / "nodes.csv").read_bytes() == NODES
    assert (dest / "philly" / "jobs.csv").read_bytes() == JOBS
    assert len(lines) == 2 and all("checksum ok" in line for line in lines)
    mirror.stop()  # verified files are kept without asking the network again
    assert fetch(dest, files, mirror=mirror.url) == {"kept": 2, "fetched": 0}


def test_a_changed_or_cut_file_is_refused_and_not_left_behind(tmp_path: Path, mirror: Mirror) -> None:
    wanted = entry("nodes.csv", NODES)
    mirror.publish(wanted, NODES.replace(b"8,G2", b"4,G2"))
    dest = tmp_path / "cache"
    with pytest.raises(FetchError, match=r"SHA-256 .* expected .* nothing was written for alibaba-gpu-2023/nodes.csv"):
        fetch(dest, [wanted], mirror=mirror.url)
    assert list((dest / "alibaba-gpu-2023").iterdir()) == []
    # A wrong local copy is replaced by the right one.
    mirror.publish(wanted, NODES)
    (dest / "alibaba-gpu-2023" / "nodes.csv").write_bytes(b"garbage")
    assert fetch(dest, [wanted], mirror=mirror.url)["fetched"] == 1
    assert (dest / "alibaba-gpu-2023" / "nodes.csv").read_bytes() == NODES


def test_a_missing_upstream_file_names_the_http_status(tmp_path: Path, mirror: Mirror) -> None:
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch(tmp_path / "cache", [entry("nodes.csv", NODES)], mirror=mirror.url)


def test_an_unreachable_network_says_what_to_do(tmp_path: Path, mirror: Mirror) -> None:
    mirror.stop()  # nothing listens on that port any more
    with pytest.raises(FetchError, match="unreachable") as caught:
        fetch(tmp_path / "cache", [entry("nodes.csv", NODES)], mirror=mirror.url, timeout=5)
    assert "--mirror" in str(caught.value) and "LEITSTAND_TRACES" in str(caught.value)
    assert not (tmp_path / "cache" / "alibaba-gpu-2023" / "nodes.csv.part").exists()


def flat(output: str) -> str:
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


def test_the_command_fetches_the_selected_traces(
    tmp_path: Path, mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = (entry("nodes.csv", NODES), entry("jobs.csv", JOBS, "philly"))
    monkeypatch.setattr(traces, "MANIFEST", files)
    mirror.publish(files[1], JOBS)  # only Philly is served
    dest = tmp_path / "cache"
    args = ["fetch", "--only", "philly", "--dest", str(dest), "--mirror", mirror.url]
    result = CliRunner().invoke(traces_app, args)
    assert result.exit_code == 0, result.output
    assert "1 fetched, 0 already present" in result.output
    assert (dest / "philly" / "jobs.csv").exists() and not (dest / "alibaba-gpu-2023").exists()

    result = CliRunner().invoke(traces_app, ["fetch", "--only", "borg", "--dest", str(dest)])
    assert result.exit_code == 2 and "--only" in flat(result.output) and "'borg'" in flat(result.output)
    mirror.stop()
    result = CliRunner().invoke(traces_app, ["fetch", "--dest", str(dest), "--mirror", mirror.url, "--timeout", "5"])
    text = flat(result.output)
    assert result.exit_code == 1 and "cannot download" in text and "Traceback" not in text


def test_lookup_order_option_env_beside_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    beside = tmp_path / "shared" / "traces"
    monkeypatch.setattr(traces, "beside_repo", lambda: beside)
    monkeypatch.setenv("LEITSTAND_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LEITSTAND_TRACES", raising=False)
    assert resolve_root() == tmp_path / "cache" / "traces"  # nothing beside the repo: the fetch cache
    beside.mkdir(parents=True)
    assert resolve_root() == beside
    monkeypatch.setenv("LEITSTAND_TRACES", str(tmp_path / "env"))
    assert resolve_root() == tmp_path / "env"
    assert resolve_root(tmp_path / "option") == tmp_path / "option"


def test_where_reports_missing_and_different_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = (entry("nodes.csv", NODES), entry("jobs.csv", JOBS, "philly"))
    monkeypatch.setattr(traces, "MANIFEST", files)
    (tmp_path / "alibaba-gpu-2023").mkdir()
    (tmp_path / "alibaba-gpu-2023" / "nodes.csv").write_bytes(NODES)
    result = CliRunner().invoke(traces_app, ["where", "--traces", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert re.search(r"ok\s+alibaba-gpu-2023/nodes.csv", result.output)
    assert re.search(r"missing\s+philly/jobs.csv", result.output)
    assert "leitstand traces fetch" in result.output


def test_the_pinned_checksums_match_the_copy_beside_the_repository() -> None:
    """The manifest was computed from the project's shared copy, which holds the upstream bytes (the
    FGD results file there is trimmed, so it is the one file allowed to differ)."""
    root = traces.beside_repo()
    present = [f for f in traces.MANIFEST if (root / f.path).is_file() and "fgd_expected_results" not in f.path]
    if not present:
        pytest.skip(f"no trace copy at {root}; `leitstand traces fetch` gets one")
    for f in present:
        data = (root / f.path).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (f.size, f.sha256), f.path
