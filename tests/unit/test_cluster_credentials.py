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
from leitstand.operator.cluster.kubeapi import collection_path
from leitstand.operator.cluster.layout import repo_root


def test_token_file_lists_every_user_with_groups() -> None:
    tokens = new_tokens()
    rows = list(csv.reader(io.StringIO(token_lines(tokens))))
    assert [r[1] for r in rows] == [
        "admin",
        "leitstand-operator",
        "tenant-a",
        "tenant-b",
        "research",
        "sme-vision",
        "sme-robotics",
        "industry",
    ]
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
    tenants = ["tenant-a", "tenant-b", "research", "sme-vision", "sme-robotics", "industry"]
    assert {(b["metadata"]["namespace"], b["subjects"][0]["name"]) for b in bindings} == {(t, t) for t in tenants}
    assert all(b["roleRef"]["name"] == "edit" and b["subjects"][0]["kind"] == "User" for b in bindings)
    namespaces = [o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"]
    assert namespaces == ["leitstand-system", *tenants]


def test_operator_user_is_bound_to_the_role_from_deploy_rbac() -> None:
    objects = rbac_objects()
    deploy = yaml.safe_load_all((repo_root() / "deploy" / "rbac" / "operator.yaml").read_text())
    [role_in_deploy] = [o for o in deploy if o["kind"] == "ClusterRole"]
    [role] = [o for o in objects if o["kind"] == "ClusterRole" and o["metadata"]["name"] == "leitstand:operator"]
    assert role == role_in_deploy  # one source: the file, not a copy in the code
    user_bindings = [o for o in objects if o["kind"] == "ClusterRoleBinding" and o["subjects"][0]["kind"] == "User"]
    assert [(b["subjects"][0]["name"], b["roleRef"]["name"]) for b in user_bindings] == [
        ("leitstand-operator", "leitstand:operator")
    ]
    # The aggregated tenant roles and the queue-viewer binding come along from deploy/rbac/tenants.yaml.
    names = {o["metadata"]["name"] for o in objects if o["kind"] == "ClusterRole"}
    assert {"leitstand:trainingjobs-edit", "leitstand:trainingjobs-view", "leitstand:queue-viewer"} <= names


def test_every_object_has_a_creatable_path_and_namespaces_come_first() -> None:
    objects = rbac_objects()
    paths = [collection_path(o) for o in objects]  # raises KeyError for a kind the cluster cannot create
    assert paths[0] == "/api/v1/namespaces"
    created: set[str] = set()
    for obj in objects:
        if obj["kind"] == "Namespace":
            created.add(obj["metadata"]["name"])
        namespace = obj["metadata"].get("namespace")
        assert namespace is None or namespace in created, obj["metadata"]


def test_rbac_objects_read_a_given_deploy_folder(tmp_path: Path) -> None:
    (tmp_path / "rbac").mkdir()
    (tmp_path / "namespace.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: ops}\n")
    (tmp_path / "rbac" / "a.yaml").write_text(
        "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: r}\nrules: []\n---\n"
    )
    objects = rbac_objects(users=(), deploy=tmp_path)
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [("Namespace", "ops"), ("ClusterRole", "r")]


def test_staging_modules_are_read_from_the_release_gomod() -> None:
    gomod = (
        "require k8s.io/api v0.0.0\nreplace (\n\tk8s.io/api => ./staging/src/k8s.io/api\n"
        "\tk8s.io/cri-api => ./staging/src/k8s.io/cri-api\n\tgithub.com/x/y => github.com/x/y v1\n)\n"
    )
    assert staging_modules(gomod) == ["k8s.io/api", "k8s.io/cri-api"]
