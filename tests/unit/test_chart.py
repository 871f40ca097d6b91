"""The Helm chart (charts/leitstand/) without helm: its copies match their one source, its defaults are
the service's defaults, every value a template reads exists, and the operator's role is deploy/'s.

What needs `helm template` (every rendered object equal to `kubectl kustomize deploy/`, lint, the schema
rejecting bad values, install and upgrade) is in tests/e2e/test_helm.py, where helm is built.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from leitstand.operator.cluster import helm
from leitstand.operator.cluster.layout import repo_root
from leitstand.operator.service.config import ApiSettings, ServiceConfig

CHART = repo_root() / "charts" / "leitstand"
DEPLOY = repo_root() / "deploy"


def values() -> dict[str, Any]:
    return dict(yaml.safe_load((CHART / "values.yaml").read_text()))


def schema() -> dict[str, Any]:
    return dict(json.loads((CHART / "values.schema.json").read_text()))


def test_the_chart_copies_are_in_step_with_their_sources() -> None:
    """crds/ = deploy/crds/, files/sample-queues.yaml = deploy/examples/queues.yaml, and the schema of
    `config` = the one generated from ServiceConfig (`leitstand cluster helm --sync-chart` fixes all)."""
    assert helm.chart_drift() == []
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == sorted(p.name for p in (DEPLOY / "crds").iterdir())


def test_drift_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_root = tmp_path / "repo"
    for sub in ("charts/leitstand", "deploy"):
        src = repo_root() / sub
        for path in src.rglob("*"):
            if path.is_file():
                target = fake_root / sub / path.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(path.read_bytes())
    monkeypatch.setattr(helm, "repo_root", lambda: fake_root)
    assert helm.chart_drift() == []
    crd = fake_root / "charts/leitstand/crds/queues.yaml"
    crd.write_text(crd.read_text().replace("Deserved GPUs", "Guaranteed GPUs"))
    (fake_root / "charts/leitstand/crds/old.yaml").write_text("# left over\n")
    assert helm.chart_drift() == [
        "charts/leitstand/crds/queues.yaml",
        "charts/leitstand/crds/old.yaml (no source in deploy/crds/)",
    ]


def test_chart_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    package = tomllib.loads((repo_root() / "pyproject.toml").read_text())["project"]["version"]
    assert chart["version"] == chart["appVersion"] == package
    assert chart["apiVersion"] == "v2" and chart["name"] == "leitstand"


def test_default_config_is_the_service_default() -> None:
    """What the ConfigMap holds by default is `leitstand run`'s own defaults, except what the chart
    sets: the release namespace, and the API on every address (probes and the Service reach it)."""
    config = values()["config"]
    rendered = {**config, "system_namespace": "leitstand-system", "api": {**config["api"], "enabled": True,
                                                                         "host": "0.0.0.0"}}
    assert ServiceConfig.model_validate(rendered) == ServiceConfig(api=ApiSettings(host="0.0.0.0"))


def test_the_config_schema_is_the_service_model_without_what_the_chart_sets() -> None:
    config = schema()["properties"]["config"]
    fields = set(ServiceConfig.model_fields)
    assert set(config["properties"]) == fields - set(helm.CHART_SET_CONFIG)
    assert config["additionalProperties"] is False  # a misspelt setting fails at install, as at start
    api = config["$defs"]["ApiSettings"]["properties"]
    assert set(api) == set(ApiSettings.model_fields) - set(helm.CHART_SET_API)
    scheduler = config["$defs"]["SchedulerSettings"]["properties"]
    assert scheduler["min_runtime_seconds"]["minimum"] == 0 and scheduler["max_victims"]["minimum"] == 1
    refs = re.findall(r'"\$ref": "([^"]+)"', json.dumps(config))
    assert refs and all(r.startswith("#/properties/config/$defs/") for r in refs)


def _undeclared(value: Any, node: dict[str, Any], root: dict[str, Any], path: str) -> list[str]:
    """Keys of `value` that a closed object of the schema (`additionalProperties: false`) does not list."""
    if "$ref" in node:
        target: Any = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    if not isinstance(value, dict):
        return []
    props = node.get("properties", {})
    wrong = [f"{path}.{k}" for k in value if k not in props and node.get("additionalProperties") is False]
    for key, sub in value.items():
        if key in props:
            wrong += _undeclared(sub, props[key], root, f"{path}.{key}")
    return wrong


def test_every_default_value_is_declared_in_the_schema() -> None:
    assert _undeclared(values(), schema(), schema(), "") == []
    top = schema()["properties"]
    assert set(values()) == set(top) - {"global"}
    assert all(top[k].get("description") or top[k].get("type") or top[k].get("enum") for k in top)


def test_every_value_a_template_reads_exists() -> None:
    """`.Values.a.b` in a template names a default in values.yaml (a typo renders as empty, silently)."""
    defaults = values()
    missing = []
    for template in sorted((CHART / "templates").rglob("*")):
        if not template.is_file():
            continue
        for ref in sorted(set(re.findall(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", template.read_text()))):
            node: Any = defaults
            for part in ref.strip(".").split("."):
                if not isinstance(node, dict) or part not in node:
                    missing.append(f"{template.name}: .Values{ref}")
                    break
                node = node[part]
    assert missing == []


def test_the_operator_role_is_deploys_rule_for_rule() -> None:
    """The ClusterRole's rules in the template are literal YAML (no template code), equal to
    deploy/rbac/operator.yaml's; the whole rendered role and binding are compared in test_helm.py."""
    text = (CHART / "templates" / "rbac-operator.yaml").read_text()
    rules_block = text[text.index("rules:") : text.index("---")]
    assert "{{" not in rules_block
    deploy = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "rbac" / "operator.yaml").read_text()) if d}
    assert yaml.safe_load(rules_block)["rules"] == deploy["ClusterRole"]["rules"]
    assert "name: leitstand:operator" in text and "kind: ServiceAccount" in text


def test_the_deployment_is_hardened_and_probed() -> None:
    """The default values give a non-root, read-only pod whose only writable places are emptyDirs, and
    probes on the API's health endpoints."""
    v = values()
    assert v["replicas"] == 2
    assert v["podSecurityContext"]["runAsNonRoot"] is True and v["podSecurityContext"]["runAsUser"] > 0
    assert v["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert re.search(rf"{probe}:\n\s+httpGet: {{path: {path}, port: http}}", deployment), probe
    assert "name: NUMBA_CACHE_DIR" in deployment and "emptyDir" in deployment
    term = v["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert {"key": "type", "operator": "NotIn", "values": ["kwok"]} in term["matchExpressions"]
