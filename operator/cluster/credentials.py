"""Identities of the local cluster: PKI, static bearer tokens, kubeconfigs and the RBAC that scopes them.

Called by `controlplane.up`. The users (all static tokens in `tokens.csv`, checked by kube-apiserver's
`--token-auth-file`):

* `admin` in group `system:masters` (everything; kwok, kube-controller-manager and kube-scheduler use it);
* `leitstand-operator` in group `leitstand:operators`, bound to the ClusterRole `leitstand:operator`
  (what the operator needs: pods, pods/binding, pods/eviction, nodes, events, leases, CRDs, leitstand.dev);
* `tenant-a`, `tenant-b` (the tests' and the demo's tenants) and the example tenants `research` (a research
  consortium), `sme-vision`, `sme-robotics` (two projects of an SME department) and `industry`, all in group
  `leitstand:tenants`, each bound to the built-in `edit` ClusterRole in its own namespace only (so listing
  nodes, binding pods or reading another tenant is denied).

The roles themselves are not written here: `rbac_objects` reads the operator's namespace and the RBAC
files from `deploy/` (`namespace.yaml`, `rbac/*.yaml`, the same files a real install applies), then adds
the local users' bindings and namespaces. Through the aggregated roles in `deploy/rbac/tenants.yaml`,
`edit` includes TrainingJobs, and every user may read Queues.

The PKI is made with the `openssl` command line (a CA, a serving certificate for 127.0.0.1/localhost,
and the service-account RSA key pair). Pure functions (`token_lines`, `kubeconfig`, `rbac_objects`) are
unit-tested without binaries.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from leitstand.operator.cluster.layout import repo_root

OPERATOR_CLUSTER_ROLE = "leitstand:operator"
"""Defined in `deploy/rbac/operator.yaml`."""


@dataclass(frozen=True, slots=True)
class User:
    name: str
    groups: tuple[str, ...]
    namespace: str | None = None
    """For tenants: the only namespace they may edit (also the kubeconfig's default namespace)."""


USERS: tuple[User, ...] = (
    User("admin", ("system:masters",)),
    User("leitstand-operator", ("leitstand:operators",)),
    User("tenant-a", ("leitstand:tenants",), namespace="tenant-a"),
    User("tenant-b", ("leitstand:tenants",), namespace="tenant-b"),
    # The tenants of deploy/examples/ (each example applies as the user owning its namespace).
    User("research", ("leitstand:tenants",), namespace="research"),
    User("sme-vision", ("leitstand:tenants",), namespace="sme-vision"),
    User("sme-robotics", ("leitstand:tenants",), namespace="sme-robotics"),
    User("industry", ("leitstand:tenants",), namespace="industry"),
)


class PkiError(RuntimeError):
    """openssl is missing or failed."""


def new_tokens(users: tuple[User, ...] = USERS) -> dict[str, str]:
    return {user.name: secrets.token_hex(24) for user in users}


def token_lines(tokens: dict[str, str], users: tuple[User, ...] = USERS) -> str:
    """The `--token-auth-file` CSV: `token,user,uid,"group1,group2"` per line."""
    return "".join(f'{tokens[u.name]},{u.name},{u.name},"{",".join(u.groups)}"\n' for u in users)


def kubeconfig(server: str, ca_pem: bytes, user: str, token: str, namespace: str | None = None) -> dict[str, Any]:
    context: dict[str, Any] = {"cluster": "leitstand-local", "user": user}
    if namespace:
        context["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "leitstand-local",
                "cluster": {"server": server, "certificate-authority-data": b64encode(ca_pem).decode()},
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": f"{user}@leitstand-local", "context": context}],
        "current-context": f"{user}@leitstand-local",
    }


def write_kubeconfigs(
    run: Path, server: str, ca_pem: bytes, tokens: dict[str, str], users: tuple[User, ...] = USERS
) -> dict[str, Path]:
    """Write `<run>/<user>.kubeconfig` (mode 600) for every user; return the paths by user name."""
    written: dict[str, Path] = {}
    for user in users:
        path = run / f"{user.name}.kubeconfig"
        path.touch(mode=0o600)
        path.write_text(yaml.safe_dump(kubeconfig(server, ca_pem, user.name, tokens[user.name], user.namespace)))
        written[user.name] = path
    return written


def deploy_rbac_files(deploy: Path | None = None) -> list[Path]:
    """The committed manifests the local cluster applies: the operator's namespace, then `rbac/*.yaml`."""
    deploy = deploy or repo_root() / "deploy"
    return [deploy / "namespace.yaml", *sorted((deploy / "rbac").glob("*.yaml"))]


def load_manifests(paths: list[Path]) -> list[dict[str, Any]]:
    """Every object of the given (multi-document) YAML files, in order; empty documents skipped."""
    objects: list[dict[str, Any]] = []
    for path in paths:
        objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return objects


def rbac_objects(users: tuple[User, ...] = USERS, deploy: Path | None = None) -> list[dict[str, Any]]:
    """Namespaces, roles and bindings applied right after the apiserver is up, in creation order.

    First `deploy/namespace.yaml` and `deploy/rbac/*.yaml` (one source with a real install), then per
    user: the operator user's binding to `leitstand:operator`, each tenant's namespace and its `edit`
    RoleBinding there.
    """
    objects = load_manifests(deploy_rbac_files(deploy))
    for user in users:
        if "leitstand:operators" in user.groups:
            objects.append(
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": f"{OPERATOR_CLUSTER_ROLE}:{user.name}"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": OPERATOR_CLUSTER_ROLE,
                    },
                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user.name}],
                }
            )
        if user.namespace:
            objects.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": user.namespace}})
            objects.append(
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "RoleBinding",
                    "metadata": {"name": f"leitstand:tenant:{user.name}", "namespace": user.namespace},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": "edit",
                    },
                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user.name}],
                }
            )
    return objects


def _openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        raise PkiError("`openssl` is not on PATH: install it (apt-get install openssl) and retry.")
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PkiError(f"openssl {args[0]} failed: {proc.stderr.strip()[-600:]}")


def make_pki(pki: Path) -> None:
    """CA (`ca.crt`), serving cert (`server.crt/key`, SAN 127.0.0.1 and localhost), SA keys (`sa.key/pub`)."""
    pki.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "3650",
        "-subj",
        "/CN=leitstand-local-ca",
        cwd=pki,
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=kube-apiserver",
        cwd=pki,
    )
    (pki / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc,IP:10.96.0.1\n"
        "extendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n"
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "3650",
        "-extfile",
        "server.ext",
        cwd=pki,
    )
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    for key in ("ca.key", "server.key", "sa.key"):
        (pki / key).chmod(0o600)
