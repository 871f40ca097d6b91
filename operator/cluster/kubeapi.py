"""A minimal, thread-safe JSON client for kube-apiserver over HTTPS with a bearer token.

Called by `controlplane` (readiness, RBAC objects) and `nodes` (creating hundreds of Nodes
concurrently). Stdlib only: each thread keeps one keep-alive `http.client` connection, which is what
makes 1,000 node creations take seconds rather than a kubectl process per node. Not a general client:
tests and the operator use the official `kubernetes` package or kubectl.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


class ApiError(RuntimeError):
    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        super().__init__(f"{method} {path} -> HTTP {status}: {body[:500]}")
        self.status = status


@dataclass
class KubeApi:
    server: str
    """https://127.0.0.1:<port>"""
    token: str
    ca_file: str
    timeout_seconds: float = 30.0
    _local: threading.local = field(default_factory=threading.local, repr=False)
    _opened: list[http.client.HTTPSConnection] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _connection(self) -> http.client.HTTPSConnection:
        conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            parts = urlsplit(self.server)
            context = ssl.create_default_context(cafile=self.ca_file)
            conn = http.client.HTTPSConnection(
                parts.hostname or "127.0.0.1", parts.port, context=context, timeout=self.timeout_seconds
            )
            self._local.conn = conn
            with self._lock:
                self._opened.append(conn)
        return conn

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        """Send one request; return (status, decoded JSON or text). Retries once on a dropped connection."""
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, path, body=payload, headers=headers)
                resp = conn.getresponse()
                raw = resp.read().decode(errors="replace")
                break
            except (http.client.HTTPException, ConnectionError, TimeoutError, ssl.SSLError):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        try:
            return resp.status, json.loads(raw)
        except json.JSONDecodeError:
            return resp.status, raw

    def create(self, path: str, obj: dict[str, Any], exist_ok: bool = True) -> int:
        status, body = self.request("POST", path, obj)
        if status in (200, 201, 202) or (exist_ok and status == 409):
            return status
        raise ApiError(status, "POST", path, json.dumps(body) if not isinstance(body, str) else body)

    def get(self, path: str) -> Any:
        status, body = self.request("GET", path)
        if status != 200:
            raise ApiError(status, "GET", path, json.dumps(body) if not isinstance(body, str) else body)
        return body

    def close_all(self) -> None:
        """Close every thread's connection (after a thread pool is done with this client)."""
        with self._lock:
            for conn in self._opened:
                conn.close()
            self._opened.clear()
        self._local.conn = None

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


PLURALS = {
    "Namespace": "namespaces",
    "Node": "nodes",
    "CustomResourceDefinition": "customresourcedefinitions",
    "PriorityClass": "priorityclasses",
    "ClusterRole": "clusterroles",
    "ClusterRoleBinding": "clusterrolebindings",
    "RoleBinding": "rolebindings",
    "Role": "roles",
    "ServiceAccount": "serviceaccounts",
    "FlowSchema": "flowschemas",
}


def collection_path(obj: Mapping[str, Any]) -> str:
    """The POST path for one of the kinds Leitstand's own tools create (`controlplane`'s RBAC and
    nodes, the benchmarks' install of deploy/); KeyError naming the kind for any other."""
    kind = obj["kind"]
    plural = PLURALS.get(kind)
    if plural is None:
        raise KeyError(f"no collection path known for kind {kind}: add it to kubeapi.PLURALS")
    api_version = obj["apiVersion"]
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    namespace = obj.get("metadata", {}).get("namespace")
    return f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
