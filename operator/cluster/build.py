"""`leitstand cluster build`: compile the cluster's binaries from published Go modules into the cache.

Called by `commands` (and by `controlplane.up` when a binary is missing). Three throw-away wrapper
modules under `<cache>/src/` (never in the repo):

* `k8s`: requires `k8s.io/kubernetes@v1.34.x` and replaces every staging module (`k8s.io/X v0.0.0`, which
  the proxy does not have) with `k8s.io/X@v0.34.x`, the list read from that release's go.mod. One
  `go build` makes kube-apiserver, kube-controller-manager, kube-scheduler and kubectl, sharing compile
  work, with upstream's version ldflags so `--version` is truthful.
* `etcd`: requires `go.etcd.io/etcd/server/v3` (its requires are real versions, no replaces needed).
* `kwok`: requires `sigs.k8s.io/kwok/cmd/kwok`; the upstream stage files are copied from the module cache.

A component is skipped when its binaries already report the pinned version. Go runs with
`GOTOOLCHAIN=local` (never downloads a toolchain) and `CGO_ENABLED=0`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from leitstand.operator.cluster.layout import (
    ETCD_VERSION,
    K8S_BINARIES,
    K8S_VERSION,
    KWOK_VERSION,
    UPSTREAM_STAGES,
    CachePaths,
    cache_paths,
)

MIN_GO = (1, 24)


class BuildError(RuntimeError):
    """A build step failed; the message names the step and how to fix it."""


Report = Callable[[str], None]


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(GOTOOLCHAIN="local", CGO_ENABLED="0", GOFLAGS="-buildvcs=false -modcacherw")
    return env


_STEPS: dict[str, str] = {}
"""Component (log file stem) → the go command it is running now, for the progress lines of `build`."""


def _run(args: list[str], cwd: Path, log: Path) -> str:
    """Run a go command, appending its output to `log`; raise BuildError with the tail on failure."""
    _STEPS[log.stem.removeprefix("build-")] = " ".join(args[:2]) if args[:1] == ["go"] else args[0]
    with log.open("a") as out:
        out.write(f"$ {' '.join(args)}\n")
        out.flush()
        proc = subprocess.run(args, cwd=cwd, env=_go_env(), stdout=subprocess.PIPE, stderr=out, text=True)
        out.write(proc.stdout)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise BuildError(
            f"`{' '.join(args[:3])} ...` failed in {cwd} (exit {proc.returncode}); full log: {log}\n{tail}"
        )
    return proc.stdout


def check_go() -> str:
    """Return `go version` output; raise BuildError if Go is missing, too old, or has no module proxy."""
    go = shutil.which("go")
    if go is None:
        raise BuildError("`go` is not on PATH: install Go >= 1.24 (https://go.dev/dl) and retry.")
    version = subprocess.run([go, "version"], capture_output=True, text=True, env=_go_env()).stdout.strip()
    match = re.search(r"go(\d+)\.(\d+)", version)
    if match is None or (int(match[1]), int(match[2])) < MIN_GO:
        raise BuildError(f"Go >= {MIN_GO[0]}.{MIN_GO[1]} is needed, found {version!r}.")
    proxy = subprocess.run([go, "env", "GOPROXY"], capture_output=True, text=True).stdout.strip()
    if proxy in ("", "off"):
        raise BuildError("GOPROXY is off: set GOPROXY=https://proxy.golang.org (or your mirror).")
    probe = subprocess.run(
        [go, "list", "-m", "-json", f"sigs.k8s.io/kwok@v{KWOK_VERSION}"],
        capture_output=True,
        text=True,
        env=_go_env(),
        cwd=Path.home(),
        timeout=120,
    )
    if probe.returncode != 0:
        raise BuildError(
            f"the Go module proxy ({proxy}) is not reachable: "
            f"{probe.stderr.strip()[-400:]}\nCheck network access or set GOPROXY."
        )
    return version


def _reports(binary: Path, flag: str, expected: str) -> bool:
    if not binary.is_file():
        return False
    try:
        out = subprocess.run([str(binary), flag], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return expected in out.stdout + out.stderr


def k8s_built(paths: CachePaths) -> bool:
    want = f"v{K8S_VERSION}"
    return all(
        _kubectl_reports(paths.binary(name), want)
        if name == "kubectl"
        else _reports(paths.binary(name), "--version", want)
        for name in K8S_BINARIES
    )


def _kubectl_reports(binary: Path, want: str) -> bool:
    if not binary.is_file():
        return False
    out = subprocess.run([str(binary), "version", "--client"], capture_output=True, text=True, timeout=30)
    return want in out.stdout


def etcd_built(paths: CachePaths) -> bool:
    return _reports(paths.binary("etcd"), "--version", f"etcd Version: {ETCD_VERSION}")


def kwok_built(paths: CachePaths) -> bool:
    stages_ok = all((paths.stages / Path(rel).name).is_file() for rel in UPSTREAM_STAGES)
    return stages_ok and _reports(paths.binary("kwok"), "--version", KWOK_VERSION)


def staging_modules(kubernetes_gomod: str) -> list[str]:
    """The `k8s.io/X` modules that k8s.io/kubernetes' go.mod maps to `./staging/src/k8s.io/X`."""
    return sorted(set(re.findall(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", kubernetes_gomod, re.M)))


def _fresh_wrapper(directory: Path, name: str, log: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for leftover in ("go.mod", "go.sum"):
        (directory / leftover).unlink(missing_ok=True)
    _run(["go", "mod", "init", f"local/leitstand-{name}-build"], directory, log)


def build_k8s(paths: CachePaths, log: Path) -> None:
    wrapper = paths.src / "k8s"
    _fresh_wrapper(wrapper, "k8s", log)
    minor = K8S_VERSION.split(".")[1]
    staging_version = "v0." + K8S_VERSION.split(".", 1)[1]
    # The release's own language settings, so the binaries run with the GODEBUG defaults k8s chose.
    _run(["go", "mod", "edit", "-go=1.24.0", "-godebug=default=go1.24"], wrapper, log)
    info = json.loads(_run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@v{K8S_VERSION}"], wrapper, log))
    modules = staging_modules(Path(info["GoMod"]).read_text())
    if not modules:
        raise BuildError(f"no staging replaces found in {info['GoMod']}; the recipe needs revisiting.")
    edits = [f"-replace={m}={m}@{staging_version}" for m in modules]
    _run(["go", "mod", "edit", *edits, f"-require=k8s.io/kubernetes@v{K8S_VERSION}"], wrapper, log)
    pkgs = [f"k8s.io/kubernetes/cmd/{name}" for name in K8S_BINARIES]
    _run(["go", "get", "-tool", *(f"{p}@v{K8S_VERSION}" for p in pkgs)], wrapper, log)
    build_date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ldflags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        ldflags += [
            f"-X {pkg}.gitVersion=v{K8S_VERSION}",
            f"-X {pkg}.gitMajor=1",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate={build_date}",
        ]
    paths.bin.mkdir(parents=True, exist_ok=True)
    _run(
        [
            "go",
            "build",
            "-trimpath",
            "-tags=selinux,notest",
            "-ldflags",
            " ".join(ldflags),
            "-o",
            str(paths.bin) + "/",
            *pkgs,
        ],
        wrapper,
        log,
    )


def _build_go_tool(
    paths: CachePaths,
    log: Path,
    name: str,
    package: str,
    version: str,
    ldflags: Callable[[Path], list[str]] | None = None,
) -> None:
    """`go get` `package`@v`version` into a fresh wrapper module, then build it to bin/`name`.

    `ldflags(wrapper)`: extra `-X` flags, computed once the wrapper's requirements are known (helm's
    version variables need the client-go version it was resolved with)."""
    wrapper = paths.src / name
    _fresh_wrapper(wrapper, name, log)
    _run(["go", "get", f"{package}@v{version}"], wrapper, log)
    paths.bin.mkdir(parents=True, exist_ok=True)
    flags = " ".join(["-s", "-w", *(ldflags(wrapper) if ldflags else [])])
    _run(
        ["go", "build", "-trimpath", "-ldflags", flags, "-o", str(paths.binary(name)), package],
        wrapper,
        log,
    )


def build_etcd(paths: CachePaths, log: Path) -> None:
    _build_go_tool(paths, log, "etcd", "go.etcd.io/etcd/server/v3", ETCD_VERSION)


def build_kwok(paths: CachePaths, log: Path) -> None:
    # `go get` of the command package (not just the module) so go.sum covers all its imports.
    _build_go_tool(paths, log, "kwok", "sigs.k8s.io/kwok/cmd/kwok", KWOK_VERSION)
    copy_upstream_stages(paths, log)


def copy_upstream_stages(paths: CachePaths, log: Path) -> None:
    modcache = Path(_run(["go", "env", "GOMODCACHE"], paths.root, log).strip())
    source = modcache / f"sigs.k8s.io/kwok@v{KWOK_VERSION}" / "kustomize" / "stage"
    paths.stages.mkdir(parents=True, exist_ok=True)
    for rel in UPSTREAM_STAGES:
        shutil.copyfile(source / rel, paths.stages / Path(rel).name)


def missing(paths: CachePaths | None = None) -> list[str]:
    """Components whose binaries are absent or report another version."""
    paths = paths or cache_paths()
    checks = {"kubernetes": k8s_built, "etcd": etcd_built, "kwok": kwok_built}
    return [name for name, built in checks.items() if not built(paths)]


def build(force: bool = False, report: Report = print, progress_seconds: float = 30.0) -> dict[str, float]:
    """Build what is missing (everything with `force`); return seconds spent per component."""
    paths = cache_paths()
    todo = ["kubernetes", "etcd", "kwok"] if force else missing(paths)
    if not todo:
        report(f"build: up to date in {paths.bin} (k8s v{K8S_VERSION}, etcd v{ETCD_VERSION}, kwok v{KWOK_VERSION})")
        return {}
    report(f"build: {check_go()}; building {', '.join(todo)} into {paths.bin}")
    builders = {"kubernetes": build_k8s, "etcd": build_etcd, "kwok": build_kwok}
    paths.logs.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    def one(name: str) -> None:
        log = paths.logs / f"build-{name}.log"
        log.write_text("")
        report(f"build: {name} (log: {log}) ...")
        start = time.monotonic()
        builders[name](paths, log)
        seconds[name] = time.monotonic() - start
        report(f"build: {name} done in {seconds[name]:.0f} s")

    # Concurrently: downloads of one overlap compiles of another (the cold build is ~8.5 min on 2 cores).
    # A progress line every `progress_seconds` says what each component is doing, instead of silence.
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(todo)) as pool:
        futures = [pool.submit(one, name) for name in todo]
        while not all(f.done() for f in futures):
            done_waiting = time.monotonic() + progress_seconds
            while time.monotonic() < done_waiting and not all(f.done() for f in futures):
                time.sleep(0.5)
            busy = [n for n in todo if n not in seconds]
            if busy and not all(f.done() for f in futures):
                elapsed = time.monotonic() - started
                steps = ", ".join(f"{n}: {_STEPS.get(n, 'starting')}" for n in busy)
                report(f"build: {int(elapsed // 60)} min {int(elapsed % 60):02d} s; running {steps}")
        for future in futures:
            future.result()
    still = missing(paths)
    if still:
        raise BuildError(f"built, but {', '.join(still)} still does not report the pinned version; see {paths.logs}.")
    return seconds
