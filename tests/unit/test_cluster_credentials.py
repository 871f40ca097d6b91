"""Static tokens, kubeconfigs and RBAC objects of the local cluster (no binaries needed)."""

from __future__ import annotations

import base64
import csv
import io
from pathlib import Path

import yaml

from leitstand.operator.cluster.build import staging_modules
from leitstand.operator.cluster.credentials import (
    USERS,
    kubeconfig,
    new_tokens,
    rbac_objects,
    token_lines,
    write_kubeconfigs,
)


def test_token_file_lists_every_user_with_groups() -> None:
    tokens = new_tokens()
    rows = list(csv.reader(io.StringIO(token_lines(tokens))))
    assert [r[1] for r in rows] == ["admin", "leitstand-operator", "tenant-a", "tenant-b"]
    assert rows[0] == [tokens["admin"], "admin", "admin", "system:masters"]
    assert len(set(tokens.values())) == len(USERS)


def test_kubeconfig_carries_ca_token_and_tenant_namespace(tmp_path: Path) -> None:
    tokens = new_tokens()
    paths = write_kubeconfigs(tmp_path, "https://127.0.0.1:6443", b"PEM", tokens)
    config = yaml.safe_load(paths["tenant-a"].read_text())
    assert config["users"][0]["user"]["token"] == tokens["tenant-a"]
    assert config["contexts"][0]["context"]["namespace"] == "tenant-a"
    assert base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]) == b"PEM"
    assert paths["admin"].stat().st_mode & 0o777 == 0o600
    assert "namespace" not in kubeconfig("https://x", b"", "admin", "t")["contexts"][0]["context"]


def test_tenants_get_edit_only_in_their_namespace() -> None:
    objects = rbac_objects()
    bindings = [o for o in objects if o["kind"] == "RoleBinding"]
    assert {(b["metadata"]["namespace"], b["subjects"][0]["name"]) for b in bindings} == {
        ("tenant-a", "tenant-a"),
        ("tenant-b", "tenant-b"),
    }
    assert all(b["roleRef"]["name"] == "edit" for b in bindings)
    [crb] = [o for o in objects if o["kind"] == "ClusterRoleBinding"]
    assert crb["subjects"][0]["name"] == "leitstand-operator"


def test_staging_modules_are_read_from_the_release_gomod() -> None:
    gomod = (
        "require k8s.io/api v0.0.0\nreplace (\n\tk8s.io/api => ./staging/src/k8s.io/api\n"
        "\tk8s.io/cri-api => ./staging/src/k8s.io/cri-api\n\tgithub.com/x/y => github.com/x/y v1\n)\n"
    )
    assert staging_modules(gomod) == ["k8s.io/api", "k8s.io/cri-api"]
