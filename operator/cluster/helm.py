"""Helm for the chart (`charts/leitstand/`): built from its Go module into the cache, and the chart's parts
that are copies of another source, kept in step with it.

Called by `commands` (`leitstand cluster build --with-helm`, `leitstand cluster helm ...`) and by the
chart's tests (`tests/unit/test_chart.py`, `tests/e2e/test_helm.py`). Two jobs, both small:

* **Build.** `helm.sh/helm/v3/cmd/helm` at `HELM_VERSION`, through the same throw-away wrapper module as
  etcd and KWOK (`build._build_go_tool`: the ordinary `go` client, the module proxy, `GOTOOLCHAIN=local`,
  no release-binary download), with upstream's version ldflags so `helm version` is truthful and
  `.Capabilities.KubeVersion` defaults to the Kubernetes minor of the client-go helm was built with.
* **One source per artifact.** The chart must not hand-copy what lives elsewhere: its `crds/` are byte
  copies of `deploy/crds/`, `files/sample-queues.yaml` of `deploy/examples/queues.yaml`, and the
  `config` part of `values.schema.json` is generated from the service's own pydantic model
  (`ServiceConfig`), so `helm install` rejects exactly the settings `leitstand run --config` would.
  `deploy/operator.yaml` (Deployment, Service, ConfigMap, PodDisruptionBudget for `kubectl apply -k
  deploy/`) is the chart rendered with its defaults. `sync_chart` writes all of them; `chart_drift`
  says which differ (the tests fail on it).

Nothing here talks to a cluster; rendering runs `helm template` (no kubeconfig needed).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from leitstand.operator.cluster import build as build_mod
from leitstand.operator.cluster.layout import CachePaths, cache_paths, repo_root

HELM_VERSION = "3.22.0"
"""The newest Helm 3 release on the module proxy when the chart was written (needs Go >= 1.26)."""
HELM_PACKAGE = "helm.sh/helm/v3/cmd/helm"
_VERSION_PKG = "helm.sh/helm/v3/internal/version"

CHART_NAME = "leitstand"
RELEASE_NAMESPACE = "leitstand-system"
"""The namespace `deploy/` uses; the chart takes the release's (`helm install -n ...`)."""
RELEASE_LABELS = (
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
)
"""Labels only a Helm release carries; `deploy/` has none of them, everything else is equal."""
OPERATOR_KINDS = ("ConfigMap", "Service", "Deployment", "PodDisruptionBudget")
"""What `deploy/operator.yaml` holds: the chart's objects that run the operator (its RBAC, CRDs and
priority classes have their own files in `deploy/`)."""

Report = Callable[[str], None]


class ChartError(RuntimeError):
    """`helm` failed on the chart, or a generated part of it cannot be made; the message says which."""


# -- building helm ----------------------------------------------------------------------------------------


def helm_binary(paths: CachePaths | None = None) -> Path:
    return (paths or cache_paths()).binary("helm")


def helm_built(paths: CachePaths | None = None) -> bool:
    binary = helm_binary(paths)
    if not binary.is_file():
        return False
    try:
        out = subprocess.run(
            [str(binary), "version", "--template", "{{.Version}}"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.stdout.strip() == f"v{HELM_VERSION}"


def _ldflags(wrapper: Path, log: Path) -> list[str]:
    """Upstream's Makefile flags: the version, and the Kubernetes version `helm template`/`lint` assume
    without a cluster (client-go v0.X → 1.X)."""
    client_go = build_mod._run(["go", "list", "-m", "-f", "{{.Version}}", "k8s.io/client-go"], wrapper, log).strip()
    minor = client_go.removeprefix("v").split(".")[1]
    flags = [
        f"-X {_VERSION_PKG}.version=v{HELM_VERSION}",
        f"-X {_VERSION_PKG}.gitTreeState=clean",
    ]
    for pkg in ("helm.sh/helm/v3/pkg/lint/rules", "helm.sh/helm/v3/pkg/chartutil"):
        flags += [f"-X {pkg}.k8sVersionMajor=1", f"-X {pkg}.k8sVersionMinor={minor}"]
    return flags


def build_helm(paths: CachePaths, log: Path) -> None:
    build_mod._build_go_tool(
        paths, log, "helm", HELM_PACKAGE, HELM_VERSION, ldflags=lambda wrapper: _ldflags(wrapper, log)
    )


_CHECKED: set[Path] = set()
"""Binaries this process has seen report HELM_VERSION (so `run_helm` asks once, not per call)."""


def ensure_helm(report: Report = print, force: bool = False) -> Path:
    """The cached helm binary, built first if it is missing or another version (or with `force`)."""
    paths = cache_paths()
    if not force and helm_binary(paths) in _CHECKED:
        return helm_binary(paths)
    if force or not helm_built(paths):
        report(f"helm: {build_mod.check_go()}; building helm v{HELM_VERSION} into {paths.bin}")
        paths.logs.mkdir(parents=True, exist_ok=True)
        log = paths.logs / "build-helm.log"
        log.write_text("")
        build_helm(paths, log)
        if not helm_built(paths):
            raise build_mod.BuildError(f"built helm, but it does not report v{HELM_VERSION}; see {log}")
    _CHECKED.add(helm_binary(paths))
    return helm_binary(paths)


def helm_env(home: Path) -> dict[str, str]:
    """helm's environment with its config, cache and data under `home` (never the user's ~/.config/helm)."""
    env = dict(os.environ)
    for kind in ("CACHE", "CONFIG", "DATA"):
        env[f"HELM_{kind}_HOME"] = str(home / kind.lower())
    return env


def run_helm(
    *args: str, home: Path, kubeconfig: Path | None = None, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`helm ARGS` with the cached binary (built if missing); `check` raises ChartError with its stderr."""
    cmd = [str(ensure_helm()), *args]
    if kubeconfig is not None:
        cmd.append(f"--kubeconfig={kubeconfig}")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=helm_env(home), timeout=timeout)
    if check and proc.returncode != 0:
        raise ChartError(f"`helm {' '.join(args)}` failed (exit {proc.returncode}):\n{proc.stderr}")
    return proc


# -- the chart's generated parts --------------------------------------------------------------------------


def chart_dir() -> Path:
    return repo_root() / "charts" / CHART_NAME


def deploy_dir() -> Path:
    return repo_root() / "deploy"


CHART_SET_CONFIG = ("system_namespace",)
"""Service settings the chart sets itself (the release namespace), so `config` may not name them."""
CHART_SET_API = ("enabled", "host")
"""`api` settings the chart sets itself: the API must listen on the pod IP for probes and the Service."""


def config_schema() -> dict[str, Any]:
    """JSON schema of the chart's `config` value: `ServiceConfig`'s without the fields the chart sets,
    titles dropped (pydantic derives them from the field names), its `$defs` kept inside it (so the
    root `$defs` of values.schema.json stay hand-written) with every `$ref` pointing there."""
    from leitstand.operator.service.config import ServiceConfig

    here = "#/properties/config/$defs/"

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key == "title" and isinstance(value, str):
                    continue
                if key == "$ref" and isinstance(value, str):
                    value = value.replace("#/$defs/", here)
                out[key] = rewrite(value)
            return out
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    schema: dict[str, Any] = rewrite(ServiceConfig.model_json_schema())
    for name in CHART_SET_CONFIG:
        schema["properties"].pop(name, None)
    api = schema.get("$defs", {}).get("ApiSettings")
    if api is not None:
        for name in CHART_SET_API:
            api["properties"].pop(name, None)
    return schema


def values_schema(current: dict[str, Any]) -> dict[str, Any]:
    """`current` (the committed values.schema.json) with `properties.config` regenerated."""
    schema = copy.deepcopy(current)
    generated = config_schema()
    described = schema["properties"].get("config", {}).get("description")
    if described:
        generated = {**generated, "description": described}
    schema["properties"]["config"] = generated
    return schema


def _schema_text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2) + "\n"


def render(
    *args: str, home: Path, chart: Path | None = None, namespace: str = RELEASE_NAMESPACE
) -> list[dict[str, Any]]:
    """`helm template leitstand CHART -n NAMESPACE ARGS` as a list of objects."""
    proc = run_helm("template", CHART_NAME, str(chart or chart_dir()), "--namespace", namespace, *args, home=home)
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def without_release_labels(obj: dict[str, Any]) -> dict[str, Any]:
    """A copy of `obj` without the labels only a Helm release has (see RELEASE_LABELS)."""
    obj = copy.deepcopy(obj)
    labels = obj.get("metadata", {}).get("labels")
    if labels is not None:
        for key in RELEASE_LABELS:
            labels.pop(key, None)
    return obj


_OPERATOR_HEADER = """\
# The operator as `kubectl apply -k deploy/` installs it: its configuration, Deployment (two replicas,
# leader election through the Lease), Service and PodDisruptionBudget.
#
# GENERATED from the Helm chart with its default values (charts/leitstand/, `helm template`); do not
# edit here: change the chart and run `leitstand cluster helm --sync-chart`. tests/e2e/test_helm.py
# fails if this file and the chart differ. The comments in charts/leitstand/templates/ explain each
# field; docs/install.md says how to change the image, replicas or settings.
"""


def operator_manifests(home: Path) -> str:
    """The text of `deploy/operator.yaml`: the chart's defaults for OPERATOR_KINDS, release labels dropped."""
    objects = [
        without_release_labels(o) for o in render("--skip-tests", home=home) if o.get("kind") in OPERATOR_KINDS
    ]
    objects.sort(key=lambda o: OPERATOR_KINDS.index(o["kind"]))
    body = "---\n".join(yaml.dump(o, Dumper=_BlockDumper, sort_keys=False, width=120) for o in objects)
    return _OPERATOR_HEADER + body


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the ConfigMap's config.yaml) as `|` blocks, readable as in the chart."""


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)


_BlockDumper.add_representer(str, _str)


def expected_files(home: Path | None = None) -> dict[Path, str]:
    """Every generated file and the text it must have. Without `home`, the parts that need helm
    (`deploy/operator.yaml`) are left out, so the fast tests can check the rest without the binary."""
    chart, deploy = chart_dir(), deploy_dir()
    files = {chart / "crds" / p.name: p.read_text() for p in sorted((deploy / "crds").glob("*.yaml"))}
    files[chart / "files" / "sample-queues.yaml"] = (deploy / "examples" / "queues.yaml").read_text()
    schema_path = chart / "values.schema.json"
    files[schema_path] = _schema_text(values_schema(json.loads(schema_path.read_text())))
    if home is not None:
        files[deploy / "operator.yaml"] = operator_manifests(home)
    return files


def chart_drift(home: Path | None = None) -> list[str]:
    """Generated files that are missing or differ from their source, and chart CRDs with no source."""
    drift = []
    expected = expected_files(home)
    for path, text in expected.items():
        if not path.is_file() or path.read_text() != text:
            drift.append(str(path.relative_to(repo_root())))
    for path in sorted((chart_dir() / "crds").glob("*")):
        if path not in expected:
            drift.append(f"{path.relative_to(repo_root())} (no source in deploy/crds/)")
    return drift


def sync_chart(home: Path, report: Report = print) -> list[Path]:
    """Write every generated file that differs; return those written. The schema is written before
    `deploy/operator.yaml` is rendered, so the render sees the chart as it will be committed."""
    written = []
    for include_render in (False, True):
        for path, text in expected_files(home if include_render else None).items():
            if not path.is_file() or path.read_text() != text:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                written.append(path)
                report(f"helm: wrote {path.relative_to(repo_root())}")
    for path in sorted((chart_dir() / "crds").glob("*")):
        if not (deploy_dir() / "crds" / path.name).is_file():
            path.unlink()
            report(f"helm: removed {path.relative_to(repo_root())} (no source in deploy/crds/)")
    return written
