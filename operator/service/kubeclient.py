"""One async HTTP session to kube-apiserver: raw JSON in, raw JSON out.

Holds the credentials loader (`load_credentials`: kubeconfig, `$KUBECONFIG`, in-cluster service
account, `~/.kube/config`), the `KubeClient` (one keep-alive `aiohttp.ClientSession`, a bound on
requests in flight, per-verb counters, retries of idempotent requests, a line-by-line watch stream)
and the error classes `ConfigError`, `ApiError`, `TransportError`.

Called by `informer` (paginated lists, watch streams), `leader` (Lease get/create/update) and the
binder (pods/binding, pods/eviction, merge-patches to status). It must not decode into typed models
(a typed `V1Pod` costs 360-840 µs against ~25 µs for `json.loads`, and the generated clients
mis-decode the binding reply; docs/operator.md, "One process, two event loops"), must not hold a
client-side QPS limit by default (kube-apiserver's priority and fairness answers 429 when it is
overloaded; `qps=` is there for the rare deployment that wants one), and must not retry a POST whose
request may have reached the server: the caller reconciles from its informer instead.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import binascii
import json
import logging
import os
import shutil
import ssl
import sys
import tempfile
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import yaml
from yarl import URL

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
"""Where Kubernetes mounts a pod's service-account token, CA bundle and namespace."""

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"

IDEMPOTENT_VERBS = frozenset({"GET", "HEAD", "PUT", "DELETE", "PATCH"})
"""Verbs `request` retries after a dropped connection. A PUT carries its resourceVersion (a repeat is
a 409, not a double write); a merge-patch sets fields to values. POST is not in the list."""

# CPython before 3.12.8 (and 3.13.0) leaks the socket of an SSL transport that is closed before its
# TLS shutdown finished (python/cpython#118960), e.g. a watch stream closed mid-way; aiohttp aborts
# such transports when `enable_cleanup_closed` is set, and warns if it is set where not needed.
_SSL_CLEANUP_NEEDED: bool = getattr(aiohttp.connector, "NEEDS_CLEANUP_CLOSED", sys.version_info < (3, 12, 8))

_STATUS_CLASS = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}

# What a dropped or broken connection raises: ServerDisconnectedError and ClientConnectorError are
# ClientConnectionErrors, ServerTimeoutError is also a TimeoutError, a cut body is a ClientPayloadError.
_CONNECTION_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError)

_HINTS = {
    400: "the request is malformed: check the body and the query parameters",
    401: "the credentials were rejected: refresh the token or the client certificate in the kubeconfig",
    403: "RBAC denies this: grant the verb on the resource to the operator's ClusterRole (deploy/rbac)",
    404: "the object or the resource type does not exist: re-read it, or install the CRD",
    409: "conflict: re-read the object and retry with its current resourceVersion",
    410: "the resourceVersion is too old: relist",
    422: "the object is invalid: fix the fields named in the message",
    429: "kube-apiserver is throttling (priority and fairness) or a PodDisruptionBudget blocks an eviction: "
    "back off and retry",
}


class KubeClientError(Exception):
    """Base of the errors this module raises."""


class ConfigError(KubeClientError):
    """The credentials cannot be loaded; the message names the file and the key to fix."""


class TransportError(KubeClientError):
    """No HTTP answer: the connection failed (after the retries allowed for the verb)."""

    def __init__(self, method: str, path: str, attempts: int, cause: BaseException) -> None:
        if method in IDEMPOTENT_VERBS:
            fix = "check that kube-apiserver is up and the server URL in the credentials is right"
        else:
            fix = (
                f"a {method} is not retried because it may have reached the server: "
                "reconcile from the informer before sending it again"
            )
        super().__init__(f"{method} {path}: no answer after {attempts} attempt(s) ({cause!r}); {fix}")
        self.method = method
        self.path = path
        self.attempts = attempts


class ApiError(KubeClientError):
    """kube-apiserver answered with a status the caller did not expect.

    `reason` and `message` come from the `Status` object of the reply (`NotFound`, `AlreadyExists`,
    `Conflict`, `Expired`, `TooManyRequests`, ...); `body` is the decoded reply.
    """

    def __init__(self, status: int, method: str, path: str, reason: str = "", message: str = "", body: Any = None):
        hint = _HINTS.get(status, "kube-apiserver failed: retry with backoff" if status >= 500 else "")
        text = f"{method} {path} -> HTTP {status}"
        if reason:
            text += f" {reason}"
        if message:
            text += f": {message}"
        if hint:
            text += f" ({hint})"
        super().__init__(text)
        self.status = status
        self.method = method
        self.path = path
        self.reason = reason
        self.message = message
        self.body = body

    @classmethod
    def from_reply(cls, status: int, method: str, path: str, body: Any) -> ApiError:
        if isinstance(body, dict):
            return cls(status, method, path, str(body.get("reason", "")), str(body.get("message", "")), body)
        return cls(status, method, path, "", str(body or "")[:500], body)


# --------------------------------------------------------------------------------------------------
# Credentials


@dataclass(frozen=True, slots=True)
class Credentials:
    """Everything needed to reach one kube-apiserver as one identity."""

    server: str
    """`https://host:port` without a trailing slash."""
    token: str | None = field(default=None, repr=False)
    """Bearer token as loaded; superseded by the content of `token_file` when that is set."""
    token_file: str | None = None
    """Re-read whenever the file changes (projected service-account tokens rotate about hourly)."""
    ca_pem: bytes | None = field(default=None, repr=False)
    """CA bundle (PEM) that signs the server's certificate; None means the system trust store."""
    client_cert_file: str | None = None
    client_key_file: str | None = None
    insecure: bool = False
    """`insecure-skip-tls-verify`: no server certificate check (never in production)."""
    namespace: str | None = None
    """The context's (or the service account's) namespace, if any."""
    source: str = ""
    """Where these came from, for error messages."""

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for an https server (None for plain http)."""
        if not self.server.startswith("https://"):
            return None
        context = ssl.create_default_context()
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif self.ca_pem:
            try:
                context.load_verify_locations(cadata=self.ca_pem.decode("ascii"))
            except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
                raise ConfigError(
                    f"{self.source}: the CA bundle is not valid PEM ({exc}); fix certificate-authority"
                ) from exc
        if self.client_cert_file:
            try:
                context.load_cert_chain(self.client_cert_file, self.client_key_file)
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(
                    f"{self.source}: cannot load the client certificate {self.client_cert_file} with key "
                    f"{self.client_key_file} ({exc}); fix client-certificate/client-key"
                ) from exc
        return context

    def current_token(self) -> str | None:
        """The token as of now (reads `token_file` if set)."""
        if self.token_file:
            return _read_token(self.token_file, self.source)
        return self.token


def load_credentials(kubeconfig: str | os.PathLike[str] | None = None, *, context: str | None = None) -> Credentials:
    """Credentials from, in this order: `kubeconfig`, the first existing file of `$KUBECONFIG`, the
    in-cluster service account (`KUBERNETES_SERVICE_HOST`/`_PORT` and `SERVICE_ACCOUNT_DIR`), or
    `~/.kube/config`. `context` overrides the kubeconfig's current-context."""
    if kubeconfig is not None:
        return _from_kubeconfig(Path(kubeconfig), context)
    env = os.environ.get("KUBECONFIG", "")
    if env:
        candidates = [Path(p).expanduser() for p in env.split(os.pathsep) if p]
        for path in candidates:
            if path.is_file():
                return _from_kubeconfig(path, context)
        raise ConfigError(f"$KUBECONFIG={env!r}: none of its files exists; point it at a kubeconfig or unset it")
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if host and port:
        return _in_cluster(host, port)
    home_config = Path.home() / ".kube" / "config"
    if home_config.is_file():
        return _from_kubeconfig(home_config, context)
    raise ConfigError(
        "no Kubernetes credentials: pass a kubeconfig, set $KUBECONFIG, run in a pod with a service "
        f"account, or write {home_config}"
    )


def _in_cluster(host: str, port: str) -> Credentials:
    sa = SERVICE_ACCOUNT_DIR
    token_file = sa / "token"
    source = f"in-cluster service account ({sa})"
    if not token_file.is_file():
        raise ConfigError(
            f"{source}: {token_file} is missing; mount the service-account token "
            "(automountServiceAccountToken: true) or pass a kubeconfig"
        )
    ca_file = sa / "ca.crt"
    if not ca_file.is_file():
        raise ConfigError(f"{source}: {ca_file} is missing; the service-account volume must carry ca.crt")
    namespace_file = sa / "namespace"
    namespace = namespace_file.read_text().strip() if namespace_file.is_file() else None
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal
    return Credentials(
        server=f"https://{host}:{port}",
        token=_read_token(str(token_file), source),
        token_file=str(token_file),
        ca_pem=ca_file.read_bytes(),
        namespace=namespace,
        source=source,
    )


def _from_kubeconfig(path: Path, context_name: str | None) -> Credentials:
    try:
        config = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"kubeconfig {path}: cannot read it ({exc.strerror}); check the path") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"kubeconfig {path}: not valid YAML ({exc})") from exc
    if not isinstance(config, dict):
        raise ConfigError(f"kubeconfig {path}: expected a mapping with clusters, users and contexts")
    name = context_name or config.get("current-context")
    if not name:
        raise ConfigError(
            f"kubeconfig {path}: no current-context; set it (kubectl config use-context NAME) or pass context="
        )
    ctx = _named(config, "contexts", "context", name, path)
    source = f"kubeconfig {path} (context {name!r})"
    cluster_name = ctx.get("cluster")
    if not cluster_name:
        raise ConfigError(f"{source}: the context has no cluster; set contexts[{name}].context.cluster")
    cluster = _named(config, "clusters", "cluster", cluster_name, path)
    server = cluster.get("server")
    if not server:
        raise ConfigError(
            f"{source}: cluster {cluster_name!r} has no server; set clusters[{cluster_name}].cluster.server"
        )
    base = path.parent
    ca_pem = _data_or_file(cluster, "certificate-authority", base, source)
    user_name = ctx.get("user")
    user: dict[str, Any] = _named(config, "users", "user", user_name, path) if user_name else {}
    token = user.get("token") or None
    token_file: str | None = None
    if not token and user.get("tokenFile"):
        token_file = str(_resolve(user["tokenFile"], base))
        token = _read_token(token_file, f"{source}, users[{user_name}].user.tokenFile")
    for unsupported in ("exec", "auth-provider", "username"):
        if user.get(unsupported) and not token:
            raise ConfigError(
                f"{source}: user {user_name!r} authenticates with {unsupported!r}, which Leitstand does not "
                "run; give the user a token, tokenFile or client certificate instead"
            )
    cert_file = _file_or_data(user, "client-certificate", base, source)
    key_file = _file_or_data(user, "client-key", base, source)
    if (cert_file is None) != (key_file is None):
        missing = "client-key" if key_file is None else "client-certificate"
        raise ConfigError(
            f"{source}: user {user_name!r} has a client certificate or key without the other; add {missing}(-data)"
        )
    return Credentials(
        server=str(server).rstrip("/"),
        token=token,
        token_file=token_file,
        ca_pem=ca_pem,
        client_cert_file=cert_file,
        client_key_file=key_file,
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        namespace=ctx.get("namespace"),
        source=source,
    )


def _named(config: dict[str, Any], section: str, inner: str, name: str, path: Path) -> dict[str, Any]:
    for entry in config.get(section) or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            value = entry.get(inner)
            return value if isinstance(value, dict) else {}
    raise ConfigError(f"kubeconfig {path}: no entry named {name!r} under {section}; add it or fix the reference")


def _resolve(value: str, base: Path) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p  # relative paths are relative to the kubeconfig, as in kubectl


def _decode_data(entry: dict[str, Any], key: str, source: str) -> bytes:
    try:
        return base64.b64decode(entry[key], validate=True)
    except (binascii.Error, TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {key} is not valid base64 ({exc}); re-encode it with `base64 -w0`") from exc


def _data_or_file(entry: dict[str, Any], key: str, base: Path, source: str) -> bytes | None:
    """`<key>-data` (base64) or `<key>` (a file) as bytes."""
    if entry.get(f"{key}-data"):
        return _decode_data(entry, f"{key}-data", source)
    if entry.get(key):
        file = _resolve(str(entry[key]), base)
        try:
            return file.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{source}: {key} {file} cannot be read ({exc.strerror}); fix the path") from exc
    return None


def _file_or_data(entry: dict[str, Any], key: str, base: Path, source: str) -> str | None:
    """`<key>` as a path, or `<key>-data` written to a private temporary file (ssl.load_cert_chain reads files)."""
    if entry.get(f"{key}-data"):
        return _private_file(_decode_data(entry, f"{key}-data", source), key)
    if entry.get(key):
        file = _resolve(str(entry[key]), base)
        if not file.is_file():
            raise ConfigError(f"{source}: {key} {file} does not exist; fix the path")
        return str(file)
    return None


_private_dir: str | None = None


def _private_file(data: bytes, stem: str) -> str:
    """Write `data` to a new mode-600 file in a mode-700 directory removed at exit."""
    global _private_dir
    if _private_dir is None:
        _private_dir = tempfile.mkdtemp(prefix="leitstand-kube-")  # mode 700
        atexit.register(shutil.rmtree, _private_dir, True)
    fd, name = tempfile.mkstemp(prefix=f"{stem}-", suffix=".pem", dir=_private_dir)  # mode 600
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return name


def _read_token(path: str, source: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{source}: token file {path} cannot be read ({exc.strerror}); fix tokenFile") from exc


# --------------------------------------------------------------------------------------------------
# The client


class KubeClient:
    """One `aiohttp.ClientSession` to one kube-apiserver, created lazily in the running loop.

    `request` never raises for an HTTP status; the helpers (`get`, `create`, `replace`, `patch_merge`,
    `patch_status`, `delete`) raise `ApiError` unless the answer is 2xx; `bind_pod` and `evict_pod`
    return `(status, body)` because every status is an outcome the binder handles. At most
    `max_in_flight` requests are sent at once (watch streams are not counted: each holds a
    connection for minutes). `counts[(verb, "2xx" | "4xx" | "5xx" | "error")]` counts requests.
    A client belongs to the event loop it was first used in.
    """

    def __init__(
        self,
        credentials: Credentials,
        *,
        max_in_flight: int = 64,
        watch_connections: int = 16,
        timeout_seconds: float = 30.0,
        connect_timeout_seconds: float = 5.0,
        retries: int = 3,
        retry_after_cap_seconds: float = 10.0,
        qps: float | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight={max_in_flight}: must be at least 1")
        self.credentials = credentials
        self.counts: dict[tuple[str, str], int] = {}
        self._base = credentials.server.rstrip("/")
        self._max_in_flight = max_in_flight
        self._connection_limit = max_in_flight + watch_connections
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds, connect=connect_timeout_seconds)
        self._connect_timeout = connect_timeout_seconds
        self._retries = retries
        self._retry_after_cap = retry_after_cap_seconds
        self._min_interval = 1.0 / qps if qps else 0.0
        self._next_slot = 0.0
        self._session: aiohttp.ClientSession | None = None
        self._slots: asyncio.Semaphore | None = None
        self._token = credentials.token
        self._token_stamp: tuple[int, int, int] | None = None
        self._headers: dict[str, dict[str, str]] = {}
        self._build_headers()

    # -- plumbing

    def _open(self) -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
        context = self.credentials.ssl_context()
        connector = aiohttp.TCPConnector(
            limit=self._connection_limit,
            ssl=context if context is not None else False,
            enable_cleanup_closed=_SSL_CLEANUP_NEEDED and context is not None,
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, headers={"User-Agent": "leitstand/0.1"}
        )
        self._slots = asyncio.Semaphore(self._max_in_flight)
        return self._session, self._slots

    def _build_headers(self) -> None:
        auth = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        self._headers = {
            "": {"Accept": JSON, **auth},
            JSON: {"Accept": JSON, "Content-Type": JSON, **auth},
            MERGE_PATCH: {"Accept": JSON, "Content-Type": MERGE_PATCH, **auth},
        }

    def _headers_for(self, content_type: str) -> dict[str, str]:
        token_file = self.credentials.token_file
        if token_file:  # one stat per request (~1 µs) notices a rotated token at once
            try:
                st = os.stat(token_file)
                stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
                if stamp != self._token_stamp:
                    self._token = _read_token(token_file, self.credentials.source)
                    self._token_stamp = stamp
                    self._build_headers()
            except (OSError, ConfigError) as exc:  # mid-rotation: keep the token we have
                log.warning("cannot re-read the token file %s (%s); keeping the previous token", token_file, exc)
        headers = self._headers.get(content_type)
        if headers is None:
            headers = {**self._headers[JSON], "Content-Type": content_type}
            self._headers[content_type] = headers
        return headers

    def _url(self, path: str, params: Mapping[str, Any] | None) -> URL:
        text = self._base + path
        if params:
            query = {k: ("true" if v else "false") if isinstance(v, bool) else v for k, v in params.items()}
            text += ("&" if "?" in path else "?") + urlencode(query)
        return URL(text, encoded=True)

    def _count(self, verb: str, status_class: str) -> None:
        key = (verb, status_class)
        self.counts[key] = self.counts.get(key, 0) + 1

    async def _throttle(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        slot = max(now, self._next_slot)
        self._next_slot = slot + self._min_interval
        if slot > now:
            await asyncio.sleep(slot - now)

    # -- requests

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, Any] | None = None,
        content_type: str = JSON,
    ) -> tuple[int, Any]:
        """Send one request; return (HTTP status, decoded JSON or text or None for an empty body).

        `body` is JSON-encoded unless it is already `bytes`/`str` (pre-serialised). Never raises for
        an HTTP status. Connection failures are retried (short backoff, `retries` times) for
        idempotent verbs, and for any verb when the TCP connection itself could not be opened (then
        nothing was sent); otherwise `TransportError`. A 429 on a GET is retried after its Retry-After.
        """
        if self._session is None or self._slots is None or self._session.closed:
            session, slots = self._open()
        else:
            session, slots = self._session, self._slots
        url = self._url(path, params)
        if body is None:
            data: bytes | None = None
            headers = self._headers_for("")
        else:
            if isinstance(body, bytes):
                data = body
            else:
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            headers = self._headers_for(content_type)
        attempt = 0
        while True:
            attempt += 1
            if self._min_interval:
                await self._throttle()
            try:
                async with slots, session.request(method, url, data=data, headers=headers) as resp:
                    status = resp.status
                    raw = await resp.read()
                    ctype = resp.headers.get("Content-Type", "")
                    retry_after = resp.headers.get("Retry-After") if status == 429 else None
            except aiohttp.ClientSSLError as exc:
                self._count(method, "error")
                raise ConfigError(
                    f"{self.credentials.source}: TLS with {self._base} failed ({exc}); check the CA bundle "
                    "(certificate-authority) and the client certificate"
                ) from exc
            except _CONNECTION_ERRORS as exc:
                self._count(method, "error")
                # ClientConnectorError: the TCP connect failed, so the request was never sent.
                retryable = method in IDEMPOTENT_VERBS or isinstance(exc, aiohttp.ClientConnectorError)
                if not retryable or attempt > self._retries:
                    raise TransportError(method, path, attempt, exc) from exc
                log.debug("%s %s: %r; retry %d", method, path, exc, attempt)
                await asyncio.sleep(0.05 * 2**attempt)
                continue
            self._count(method, _STATUS_CLASS.get(status // 100, "other"))
            if status == 429 and method == "GET" and attempt <= self._retries:
                await asyncio.sleep(self._retry_after_seconds(retry_after))
                continue
            if not raw:
                return status, None
            if ctype.startswith(JSON):
                return status, json.loads(raw)
            return status, raw.decode("utf-8", "replace")

    def _retry_after_seconds(self, header: str | None) -> float:
        try:
            seconds = float(header) if header else 1.0
        except ValueError:
            seconds = 1.0
        return min(max(seconds, 0.0), self._retry_after_cap)

    async def _checked(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        status, reply = await self.request(method, path, body, **kw)
        if not 200 <= status < 300:
            raise ApiError.from_reply(status, method, path, reply)
        return reply

    async def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET; the decoded object, or `ApiError` (404 included)."""
        return await self._checked("GET", path, params=params)

    async def create(self, path: str, body: Any) -> Any:
        """POST to a collection path; the created object, or `ApiError` (409 AlreadyExists included)."""
        return await self._checked("POST", path, body)

    async def replace(self, path: str, body: Any) -> Any:
        """PUT (a full object with its metadata.resourceVersion: 409 Conflict when stale)."""
        return await self._checked("PUT", path, body)

    async def patch_merge(self, path: str, patch: Any) -> Any:
        """JSON merge-patch (RFC 7386): set only the given fields; `None` deletes a field."""
        return await self._checked("PATCH", path, patch, content_type=MERGE_PATCH)

    async def patch_status(self, path: str, patch: Any) -> Any:
        """Merge-patch the status subresource of the object at `path`."""
        return await self._checked("PATCH", f"{path}/status", patch, content_type=MERGE_PATCH)

    async def delete(self, path: str, body: Any = None) -> Any:
        """DELETE, with optional DeleteOptions (e.g. `{"propagationPolicy": "Background"}`)."""
        return await self._checked("DELETE", path, body)

    async def bind_pod(
        self,
        namespace: str,
        name: str,
        node: str,
        *,
        uid: str | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """POST pods/{name}/binding. 201: bound. 409: already bound (or `uid` is not the live pod's),
        404: gone, 429/5xx: back off. `annotations` are copied onto the pod by the apiserver."""
        metadata: dict[str, Any] = {"name": name, "namespace": namespace}
        if uid:
            metadata["uid"] = uid
        if annotations:
            metadata["annotations"] = dict(annotations)
        body = json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": metadata,
                "target": {"apiVersion": "v1", "kind": "Node", "name": node},
            }
        ).encode()
        return await self.request("POST", f"/api/v1/namespaces/{namespace}/pods/{name}/binding", body)

    async def evict_pod(
        self, namespace: str, name: str, *, uid: str | None = None, grace_period_seconds: int | None = None
    ) -> tuple[int, Any]:
        """POST pods/{name}/eviction (policy/v1). 201/200: evicting, 404: already gone, 429: a
        PodDisruptionBudget blocks it now (retry later), 409: `uid` is not the live pod's."""
        eviction: dict[str, Any] = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
        }
        options: dict[str, Any] = {}
        if uid:
            options["preconditions"] = {"uid": uid}
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        if options:
            eviction["deleteOptions"] = options
        return await self.request(
            "POST", f"/api/v1/namespaces/{namespace}/pods/{name}/eviction", json.dumps(eviction).encode()
        )

    async def watch_stream(
        self, path: str, params: Mapping[str, Any], *, inactivity_timeout_seconds: float | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """GET `path` with `params` (which carry `watch=1`) and yield each event (`{"type", "object"}`).

        Lines are split by this reader, not by aiohttp's readline (whose line limit is 128 KiB, less
        than a large Node or CR). A non-200 answer raises `ApiError` (410: relist). If no byte
        arrives for `inactivity_timeout_seconds`, aiohttp raises `ServerTimeoutError` (a
        `TimeoutError`). Close early with `contextlib.aclosing`.
        """
        if self._session is None or self._session.closed:
            session, _ = self._open()
        else:
            session = self._session
        timeout = aiohttp.ClientTimeout(total=None, connect=self._connect_timeout, sock_read=inactivity_timeout_seconds)
        async with session.get(self._url(path, params), headers=self._headers_for(""), timeout=timeout) as resp:
            status = resp.status
            self._count("WATCH", _STATUS_CLASS.get(status // 100, "other"))
            if status != 200:
                raw = await resp.read()
                reply: Any = raw.decode("utf-8", "replace")
                if resp.headers.get("Content-Type", "").startswith(JSON) and raw:
                    reply = json.loads(raw)
                raise ApiError.from_reply(status, "WATCH", path, reply)
            loads = json.loads
            pending: list[bytes] = []  # the start of an event that spans chunks
            async for chunk in resp.content.iter_any():
                if b"\n" not in chunk:
                    pending.append(chunk)
                    continue
                if pending:
                    pending.append(chunk)
                    chunk = b"".join(pending)
                    pending.clear()
                lines = chunk.split(b"\n")
                tail = lines.pop()
                if tail:
                    pending.append(tail)
                for line in lines:
                    if line:
                        yield loads(line)
            if pending and b"".join(pending).strip():
                yield loads(b"".join(pending))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            self._slots = None
