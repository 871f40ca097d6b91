"""The container image's recipe, checked without building it (docs/image.md).

The image itself is built by hand with `bash scripts/image.sh` (buildah, minutes on 2 cores; no
Docker engine here), never in the test suite. These checks are cheap and static: the Dockerfile is
multi-stage with its base chosen by `ARG BASE` (default the official python:3.11-slim), installs the
built wheel without the dev extra, compiles the Numba kernels into the image, runs as a fixed
non-root UID with `leitstand run` as its entry point, and carries OCI labels; the build context lets
in what the COPY lines need; the wheel it installs holds every package of the source tree; the entry
point's cache seeding behaves as documented (it is a shell script, run here on temporary folders).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from leitstand.operator.cluster.layout import repo_root

REPO = repo_root()
DOCKERFILE = REPO / "Dockerfile"
ENTRYPOINT_SCRIPT = REPO / "scripts" / "image" / "entrypoint.sh"
SEED_DIR = "/opt/leitstand/numba-cache"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


def parse(text: str) -> list[Instruction]:
    """Dockerfile instructions: continuation lines joined, comment lines (also inside a continued
    instruction, as Docker allows) dropped."""
    out: list[Instruction] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if buffer and line.startswith("#"):
            continue
        if not buffer:
            start = number
        if line.endswith("\\"):
            buffer.append(line[:-1].strip())
            continue
        buffer.append(line)
        joined = " ".join(part for part in buffer if part)
        keyword, _, args = joined.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        buffer = []
    assert not buffer, "the Dockerfile ends inside a continued instruction"
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """The instructions of each stage, FROM first; what comes before the first FROM is dropped."""
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            result.append([ins])
        elif result:
            result[-1].append(ins)
    return result


INSTRUCTIONS = parse(DOCKERFILE.read_text())
STAGES = stages(INSTRUCTIONS)
FINAL = STAGES[-1]


def runs(stage: list[Instruction]) -> list[str]:
    return [ins.args for ins in stage if ins.keyword == "RUN"]


def env_of(stage: list[Instruction]) -> dict[str, str]:
    """ENV key=value pairs of a stage (later ones win)."""
    env: dict[str, str] = {}
    for ins in stage:
        if ins.keyword == "ENV":
            for token in shlex.split(ins.args):
                key, sep, value = token.partition("=")
                assert sep, f"ENV on line {ins.line}: use key=value ({token!r})"
                env[key] = value
    return env


def test_multi_stage_on_the_base_chosen_by_a_build_argument() -> None:
    global_args = [ins.args for ins in INSTRUCTIONS[: INSTRUCTIONS.index(STAGES[0][0])] if ins.keyword == "ARG"]
    assert "BASE=python:3.11-slim" in global_args, "ARG BASE must default to the official python:3.11-slim"
    assert len(STAGES) >= 2, "a build stage and a runtime stage"
    froms = [stage[0].args for stage in STAGES]
    assert all(re.fullmatch(r"\$\{BASE\}( AS \w+)?", f, flags=re.IGNORECASE) for f in froms), froms
    assert re.search(r" AS build$", froms[0], flags=re.IGNORECASE), "the first stage is named build"
    # the runtime stage takes only /opt/leitstand from the build stage (no compilers, no wheel cache)
    copies = [ins.args for ins in FINAL if ins.keyword == "COPY" and ins.args.startswith("--from=")]
    assert copies == ["--from=build /opt/leitstand /opt/leitstand"]


def test_the_wheel_is_built_and_installed_without_the_dev_extra() -> None:
    build = " && ".join(runs(STAGES[0]))
    assert re.search(r"pip wheel --no-deps --wheel-dir /dist \.( |$)", build), "the wheel is built from the repo"
    assert re.search(r"pip install (--\S+ )*/dist/leitstand-\*\.whl( |$)", build), "the built wheel is installed"
    everything = " ".join(ins.args for ins in INSTRUCTIONS)
    assert "[dev]" not in everything and ".[" not in everything, "no extras, certainly not dev"
    dev = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    for requirement in dev:
        name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]
        assert not re.search(rf"\b{re.escape(name)}\b", " ".join(runs(STAGES[0]) + runs(FINAL))), name
    assert "pip uninstall --yes pip setuptools" in build, "no installer left in the runtime venv"


def test_runs_as_a_fixed_numeric_non_root_user() -> None:
    users = [ins.args for ins in FINAL if ins.keyword == "USER"]
    assert users, "the runtime stage sets USER"
    match = re.fullmatch(r"(\d+):(\d+)", users[-1])
    assert match, f"USER must be numeric uid:gid so runAsNonRoot can verify it, not {users[-1]!r}"
    uid, gid = int(match[1]), int(match[2])
    assert uid >= 10000 and gid >= 10000
    created = " ".join(runs(FINAL))
    assert f"--uid {uid}" in created and f"--gid {gid}" in created, "the user exists in /etc/passwd too"
    # nothing runs as root after the switch
    after = FINAL[[ins.keyword for ins in FINAL].index("USER") :]
    assert not [ins for ins in after if ins.keyword == "RUN"]


def test_entry_point_is_leitstand_run_behind_the_cache_seeding_script() -> None:
    entrypoints = [ins.args for ins in FINAL if ins.keyword == "ENTRYPOINT"]
    assert len(entrypoints) == 1
    argv = json.loads(entrypoints[0])  # exec form: signals reach leitstand run (the script execs it)
    assert argv == ["/opt/leitstand/bin/entrypoint", "leitstand", "run"]
    copies = [ins.args for ins in FINAL if ins.keyword == "COPY" and not ins.args.startswith("--from=")]
    assert "scripts/image/entrypoint.sh /opt/leitstand/bin/entrypoint" in copies
    script = ENTRYPOINT_SCRIPT.read_text()
    assert script.startswith("#!/bin/sh\n")
    assert script.rstrip().endswith('exec "$@"')
    assert not [ins for ins in INSTRUCTIONS if ins.keyword == "HEALTHCHECK"], "Kubernetes probes, not HEALTHCHECK"


def test_numba_kernels_are_compiled_into_the_image_for_a_portable_cpu() -> None:
    compile_steps = [r for r in runs(FINAL) if "leitstand run --check" in r]
    assert len(compile_steps) == 1, "one build step compiles the kernels"
    assert f"NUMBA_CACHE_DIR={SEED_DIR} leitstand run --check" in compile_steps[0]
    step_index = [ins.args for ins in FINAL].index(compile_steps[0])
    env_before = env_of(FINAL[:step_index])
    # the cache index is keyed by CPU name and features: set both before compiling, and keep them
    assert env_before.get("NUMBA_CPU_NAME") == "${NUMBA_CPU_NAME}"
    assert env_before.get("NUMBA_CPU_FEATURES") == "${NUMBA_CPU_FEATURES}"
    args = [ins.args for ins in FINAL if ins.keyword == "ARG"]
    assert "NUMBA_CPU_NAME=generic" in args and "NUMBA_CPU_FEATURES=" in args
    # at run time the cache is a writable copy: Numba ignores a directory it cannot write to
    env = env_of(FINAL)
    assert env["LEITSTAND_NUMBA_SEED"] == SEED_DIR
    assert env["NUMBA_CACHE_DIR"] not in ("", SEED_DIR)
    assert f"-o 10001 -g 10001 -m 0755 {env['NUMBA_CACHE_DIR']}" in compile_steps[0]
    assert env["PYTHONDONTWRITEBYTECODE"] == "1", "the root file system may be read-only"


def test_oci_labels() -> None:
    labels = " ".join(ins.args for ins in FINAL if ins.keyword == "LABEL")
    for key in ("title", "description", "version", "revision", "created", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels, key


def test_build_context_lets_in_exactly_what_the_copy_lines_need() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "an allow-list: .venv, .git, caches and cluster binaries stay out"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    sources: list[str] = []
    for ins in INSTRUCTIONS:
        if ins.keyword == "COPY" and not ins.args.startswith("--from="):
            *srcs, _dest = ins.args.split()
            sources += [s.rstrip("/") for s in srcs]
    assert sources, "the Dockerfile copies from the context"
    for src in sources:
        assert src in allowed, f"{src} is copied but .dockerignore keeps it out"
        assert (REPO / src).exists(), src
    assert set(allowed) == set(sources), "the context holds nothing the Dockerfile does not copy"


def test_the_wheel_holds_every_package_of_the_source_tree() -> None:
    """The image installs the built wheel, not the editable checkout: a package folder missing from
    [tool.setuptools] packages imports fine in development and is absent from the image."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    found = set()
    for name, folder in setuptools["package-dir"].items():
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.parent.relative_to(REPO / folder)
            if "__pycache__" not in rel.parts:
                found.add(".".join([name, *rel.parts]))
    assert sorted(found - listed) == [], "add these to [tool.setuptools] packages in pyproject.toml"


def run_entrypoint(env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ["PATH"]}
    return subprocess.run(
        ["sh", str(ENTRYPOINT_SCRIPT), *command], env={**base, **env}, capture_output=True, text=True, check=False
    )


@pytest.fixture
def seed(tmp_path: Path) -> Path:
    seed = tmp_path / "seed"
    (seed / "scheduler_abc").mkdir(parents=True)
    (seed / "scheduler_abc" / "kernel-10.py311.nbi").write_text("index")
    return seed


def test_entrypoint_seeds_an_empty_cache_and_execs_the_command(seed: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"  # created by the script, as an emptyDir would be there already
    result = run_entrypoint(
        {"LEITSTAND_NUMBA_SEED": str(seed), "NUMBA_CACHE_DIR": str(cache)}, "sh", "-c", 'echo "ran $0 $1"', "a", "b"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ran a b\n"
    assert (cache / "scheduler_abc" / "kernel-10.py311.nbi").read_text() == "index"


def test_entrypoint_keeps_a_cache_that_is_already_there(seed: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "scheduler_abc").mkdir(parents=True)
    (cache / "scheduler_abc" / "kernel-10.py311.nbi").write_text("compiled since")
    result = run_entrypoint({"LEITSTAND_NUMBA_SEED": str(seed), "NUMBA_CACHE_DIR": str(cache)}, "true")
    assert result.returncode == 0, result.stderr
    assert (cache / "scheduler_abc" / "kernel-10.py311.nbi").read_text() == "compiled since"


def test_entrypoint_seeding_can_be_turned_off(seed: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    result = run_entrypoint({"LEITSTAND_NUMBA_SEED": "", "NUMBA_CACHE_DIR": str(cache)}, "true")
    assert result.returncode == 0, result.stderr
    assert list(cache.iterdir()) == []


def test_entrypoint_warns_about_an_unwritable_cache_and_still_runs(seed: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_entrypoint(
        {"LEITSTAND_NUMBA_SEED": str(seed), "NUMBA_CACHE_DIR": str(blocker / "cache")}, "echo", "started"
    )
    assert result.returncode == 0
    assert result.stdout == "started\n"
    assert "is not writable" in result.stderr and "emptyDir" in result.stderr
