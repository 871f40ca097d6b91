"""`leitstand cluster build` says what it is doing while it runs (a cold build takes ~10 minutes)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from leitstand.operator.cluster import build as build_mod


def test_build_reports_component_step_and_elapsed_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LEITSTAND_CACHE", str(tmp_path))
    calls = iter([["etcd"], []])
    monkeypatch.setattr(build_mod, "missing", lambda paths=None: next(calls))
    monkeypatch.setattr(build_mod, "check_go", lambda: "go version go1.26 (test)")

    def slow_etcd(paths: build_mod.CachePaths, log: Path) -> None:
        build_mod._run(["sleep", "1.2"], tmp_path, log)

    monkeypatch.setattr(build_mod, "build_etcd", slow_etcd)
    lines: list[str] = []
    started = time.monotonic()
    seconds = build_mod.build(report=lines.append, progress_seconds=0.3)
    assert time.monotonic() - started < 10
    assert set(seconds) == {"etcd"}
    progress = [line for line in lines if "running" in line]
    assert progress, lines
    assert "etcd: sleep" in progress[0] and " min " in progress[0]
    assert lines[-1].startswith("build: etcd done in")
