"""kubeclient: credentials from kubeconfigs and the in-cluster service account; the client's requests,
errors, retries, bound on requests in flight, counters and watch stream, against a small fake API
server (aiohttp.web on 127.0.0.1, a free port) started inside each test."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from leitstand.operator.service import kubeclient
from leitstand.operator.service.kubeclient import (
    ApiError,
    ConfigError,
    Credentials,
    KubeClient,
    TransportError,
    load_credentials,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def serve(
    routes: list[tuple[str, str, Handler]], ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[str]:
    """Serve `routes` on 127.0.0.1 (a free port); yield the base URL."""
    app = web.Application()
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    runner = web.AppRunner(app, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"{'https' if ssl_context else 'http'}://{host}:{port}"
    finally:
        await runner.cleanup()


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# requests


def test_request_returns_status_and_body_and_helpers_raise_api_error() -> None:
    seen: list[tuple[str, str, str, str | None, bytes]] = []

    async def record(request: web.Request) -> web.StreamResponse:
        seen.append(
            (
                request.method,
                request.path_qs,
                request.headers.get("Content-Type", ""),
                request.headers.get("Authorization"),
                await request.read(),
            )
        )
        name = request.match_info.get("name", "")
        if name == "missing":
            return web.json_response(status_body(404, "NotFound", 'pods "missing" not found'), status=404)
        if name == "text":
            return web.Response(text="plain words")
        if name == "empty":
            return web.Response(status=200)
        return web.json_response(
            {"kind": "Pod", "metadata": {"name": name}}, status=201 if request.method == "POST" else 200
        )

    routes: list[tuple[str, str, Handler]] = [
        ("*", "/api/v1/namespaces/ns/pods", record),
        ("*", "/api/v1/namespaces/ns/pods/{name}", record),
        ("*", "/api/v1/namespaces/ns/pods/{name}/status", record),
    ]

    async def main() -> None:
        async with serve(routes) as url:
            client = KubeClient(Credentials(server=url, token="t0k3n"))
            try:
                assert await client.request("GET", "/api/v1/namespaces/ns/pods/missing") == (
                    404,
                    status_body(404, "NotFound", 'pods "missing" not found'),
                )
                assert await client.request("GET", "/api/v1/namespaces/ns/pods/text") == (200, "plain words")
                assert await client.request("GET", "/api/v1/namespaces/ns/pods/empty") == (200, None)
                with pytest.raises(ApiError) as caught:
                    await client.get("/api/v1/namespaces/ns/pods/missing")
                err = caught.value
                assert (err.status, err.reason, err.message) == (404, "NotFound", 'pods "missing" not found')
                assert "GET /api/v1/namespaces/ns/pods/missing -> HTTP 404 NotFound" in str(err)
                assert "re-read it, or install the CRD" in str(err)  # the fix is named
                assert (await client.get("/api/v1/namespaces/ns/pods/p", {"labelSelector": "a=b,c in (d)"}))[
                    "metadata"
                ] == {"name": "p"}
                assert await client.create("/api/v1/namespaces/ns/pods", {"metadata": {"name": "new"}})
                await client.replace("/api/v1/namespaces/ns/pods/p", {"metadata": {"resourceVersion": "7"}})
                await client.patch_merge("/api/v1/namespaces/ns/pods/p", {"metadata": {"labels": {"a": None}}})
                await client.patch_status("/api/v1/namespaces/ns/pods/p", {"status": {"phase": "Running"}})
                await client.delete("/api/v1/namespaces/ns/pods/p", {"propagationPolicy": "Background"})
                await client.request("POST", "/api/v1/namespaces/ns/pods", b'{"pre":"serialised"}')
            finally:
                await client.close()
            assert client.counts == {
                ("GET", "4xx"): 2,
                ("GET", "2xx"): 3,
                ("POST", "2xx"): 2,
                ("PUT", "2xx"): 1,
                ("PATCH", "2xx"): 2,
                ("DELETE", "2xx"): 1,
            }

    run(main())
    by_method = [(m, p, ct, body) for m, p, ct, _, body in seen]
    assert by_method[4] == ("GET", "/api/v1/namespaces/ns/pods/p?labelSelector=a%3Db%2Cc+in+%28d%29", "", b"")
    assert by_method[5] == ("POST", "/api/v1/namespaces/ns/pods", "application/json", b'{"metadata": {"name": "new"}}')
    assert by_method[6][:3] == ("PUT", "/api/v1/namespaces/ns/pods/p", "application/json")
    assert by_method[7] == (
        "PATCH",
        "/api/v1/namespaces/ns/pods/p",
        "application/merge-patch+json",
        b'{"metadata": {"labels": {"a": null}}}',
    )
    assert by_method[8][:3] == ("PATCH", "/api/v1/namespaces/ns/pods/p/status", "application/merge-patch+json")
    assert by_method[9] == (
        "DELETE",
        "/api/v1/namespaces/ns/pods/p",
        "application/json",
        b'{"propagationPolicy": "Background"}',
    )
    assert by_method[10][3] == b'{"pre":"serialised"}'
    assert {auth for *_, auth, _ in seen} == {"Bearer t0k3n"}


def test_bind_pod_and_evict_pod_post_the_subresources_and_return_the_status() -> None:
    bodies: list[tuple[str, dict[str, Any]]] = []
    evict_answers = iter(
        [
            (201, "Success", ""),
            (429, "TooManyRequests", "Cannot evict pod as it would violate the pod's disruption budget."),
            (404, "NotFound", "gone"),
        ]
    )

    async def binding(request: web.Request) -> web.StreamResponse:
        bodies.append((request.path, await request.json()))
        return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201}, status=201)

    async def eviction(request: web.Request) -> web.StreamResponse:
        bodies.append((request.path, await request.json()))
        code, reason, message = next(evict_answers)
        return web.json_response(status_body(code, reason, message), status=code)

    routes: list[tuple[str, str, Handler]] = [
        ("POST", "/api/v1/namespaces/{ns}/pods/{name}/binding", binding),
        ("POST", "/api/v1/namespaces/{ns}/pods/{name}/eviction", eviction),
    ]

    async def main() -> None:
        async with serve(routes) as url:
            client = KubeClient(Credentials(server=url))
            try:
                status, body = await client.bind_pod("team", "job-0", "b200-0001")
                assert status == 201 and body["status"] == "Success"
                status, _ = await client.bind_pod(
                    "team", "job-1", "b200-0002", uid="u-1", annotations={"leitstand.dev/gpus": "0,1"}
                )
                assert status == 201
                assert (await client.evict_pod("team", "job-0"))[0] == 201
                status, body = await client.evict_pod("team", "job-1", uid="u-1", grace_period_seconds=0)
                assert status == 429 and "disruption budget" in body["message"]  # returned, not raised
                assert (await client.evict_pod("team", "job-2"))[0] == 404
            finally:
                await client.close()

    run(main())
    assert bodies[0] == (
        "/api/v1/namespaces/team/pods/job-0/binding",
        {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": "job-0", "namespace": "team"},
            "target": {"apiVersion": "v1", "kind": "Node", "name": "b200-0001"},
        },
    )
    assert bodies[1][1]["metadata"] == {
        "name": "job-1",
        "namespace": "team",
        "uid": "u-1",
        "annotations": {"leitstand.dev/gpus": "0,1"},
    }
    assert bodies[2] == (
        "/api/v1/namespaces/team/pods/job-0/eviction",
        {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "job-0", "namespace": "team"}},
    )
    assert bodies[3][1]["deleteOptions"] == {"preconditions": {"uid": "u-1"}, "gracePeriodSeconds": 0}


def test_dropped_connections_are_retried_for_get_but_not_for_post() -> None:
    hits = {"GET": 0, "POST": 0}

    async def flaky(request: web.Request) -> web.StreamResponse:
        hits[request.method] += 1
        # aiohttp itself resends an idempotent request once on a dropped keep-alive connection, so drop
        # three times to reach the client's own retries.
        if request.method == "POST" or hits["GET"] <= 3:
            assert request.transport is not None
            request.transport.close()
        return web.json_response({"ok": True})

    routes: list[tuple[str, str, Handler]] = [("*", "/api/v1/things", flaky)]

    async def main() -> None:
        async with serve(routes) as url:
            client = KubeClient(Credentials(server=url), retries=3)
            try:
                assert await client.request("GET", "/api/v1/things") == (200, {"ok": True})
                with pytest.raises(TransportError, match="reconcile from the informer"):
                    await client.request("POST", "/api/v1/things", {"a": 1})
            finally:
                await client.close()
            assert client.counts[("GET", "2xx")] == 1 and client.counts[("GET", "error")] >= 1
            assert client.counts[("POST", "error")] == 1

    run(main())
    assert hits["GET"] == 4
    assert hits["POST"] == 1  # never resent: it may have been applied


def test_refused_connection_is_retried_then_reported() -> None:
    async def main() -> None:
        async with serve([]) as url:
            pass  # the port is free again: connections are refused
        client = KubeClient(Credentials(server=url), retries=2)
        try:
            with pytest.raises(TransportError, match="no answer after 3 attempt") as caught:
                await client.request("POST", "/api/v1/namespaces/a/pods", {})
            assert caught.value.attempts == 3  # a refused connect sent nothing, so even a POST is retried
        finally:
            await client.close()

    run(main())


def test_429_is_retried_after_retry_after_for_get_only() -> None:
    hits = {"GET": 0, "POST": 0}

    async def throttled(request: web.Request) -> web.StreamResponse:
        hits[request.method] += 1
        if hits[request.method] == 1:
            return web.json_response(
                status_body(429, "TooManyRequests", "too many requests"), status=429, headers={"Retry-After": "1"}
            )
        return web.json_response({"ok": True})

    async def main() -> None:
        async with serve([("*", "/x", throttled)]) as url:
            client = KubeClient(Credentials(server=url), retry_after_cap_seconds=0.05)
            try:
                assert await client.request("GET", "/x") == (200, {"ok": True})
                status, body = await client.request("POST", "/x", {})
                assert status == 429 and body["reason"] == "TooManyRequests"
            finally:
                await client.close()

    run(main())
    assert hits == {"GET": 2, "POST": 1}


def test_requests_in_flight_are_bounded() -> None:
    active = 0
    peak = 0

    async def slow(request: web.Request) -> web.StreamResponse:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.03)
        active -= 1
        return web.json_response({})

    async def main() -> None:
        async with serve([("POST", "/x", slow)]) as url:
            client = KubeClient(Credentials(server=url), max_in_flight=3)
            try:
                results = await asyncio.gather(*(client.request("POST", "/x", {}) for _ in range(15)))
            finally:
                await client.close()
            assert [s for s, _ in results] == [200] * 15

    run(main())
    assert peak == 3


def test_optional_qps_limit_spaces_requests() -> None:
    async def ok(request: web.Request) -> web.StreamResponse:
        return web.json_response({})

    async def main() -> None:
        async with serve([("GET", "/x", ok)]) as url:
            client = KubeClient(Credentials(server=url), qps=50)
            try:
                start = time.monotonic()
                await asyncio.gather(*(client.request("GET", "/x") for _ in range(6)))
                assert time.monotonic() - start >= 5 / 50 * 0.9
            finally:
                await client.close()

    run(main())


def test_token_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first\n")
    seen: list[str | None] = []

    async def who(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({})

    async def main() -> None:
        async with serve([("GET", "/x", who)]) as url:
            client = KubeClient(Credentials(server=url, token="first", token_file=str(token_file)))
            try:
                await client.request("GET", "/x")
                # a projected token is rotated by swapping the file (new inode, new mtime)
                rotated = tmp_path / "token.new"
                rotated.write_text("second\n")
                os.replace(rotated, token_file)
                await client.request("GET", "/x")
                await client.request("GET", "/x")
            finally:
                await client.close()

    run(main())
    assert seen == ["Bearer first", "Bearer second", "Bearer second"]


# --------------------------------------------------------------------------------------------------
# watch stream


def test_watch_stream_splits_lines_across_chunks_and_joins_large_objects() -> None:
    big = {"type": "MODIFIED", "object": {"metadata": {"name": "big"}, "data": "x" * 400_000}}
    small = [{"type": "ADDED", "object": {"metadata": {"name": f"p{i}"}}} for i in range(3)]

    async def watch(request: web.Request) -> web.StreamResponse:
        assert request.query["watch"] == "1" and request.query["allowWatchBookmarks"] == "true"
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        await resp.prepare(request)
        await resp.write(b"".join(json.dumps(e).encode() + b"\n" for e in small))  # three events, one chunk
        payload = json.dumps(big).encode() + b"\n"
        for start in range(0, len(payload), 7_000):  # one event over ~60 chunks
            await resp.write(payload[start : start + 7_000])
            await asyncio.sleep(0)
        await resp.write(json.dumps(small[0]).encode() + b"\n" + json.dumps(small[1]).encode()[:10])
        await resp.write(json.dumps(small[1]).encode()[10:] + b"\n")
        return resp

    async def main() -> None:
        async with serve([("GET", "/api/v1/pods", watch)]) as url:
            client = KubeClient(Credentials(server=url))
            try:
                got = [
                    e async for e in client.watch_stream("/api/v1/pods", {"watch": "1", "allowWatchBookmarks": True})
                ]
            finally:
                await client.close()
            assert got == [*small, big, small[0], small[1]]
            assert client.counts == {("WATCH", "2xx"): 1}

    run(main())


def test_watch_stream_raises_api_error_for_410_and_times_out_when_silent() -> None:
    async def gone(request: web.Request) -> web.StreamResponse:
        body = status_body(410, "Expired", "too old resource version: 1 (4242)")
        return web.json_response(body, status=410)

    done = asyncio.Event()

    async def silent(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await done.wait()
        return resp

    async def main() -> None:
        async with serve([("GET", "/gone", gone), ("GET", "/silent", silent)]) as url:
            client = KubeClient(Credentials(server=url))
            try:
                with pytest.raises(ApiError) as caught:
                    async for _ in client.watch_stream("/gone", {"watch": "1", "resourceVersion": "1"}):
                        pass
                assert (caught.value.status, caught.value.reason) == (410, "Expired")
                assert "relist" in str(caught.value)
                start = time.monotonic()
                with pytest.raises(TimeoutError):
                    async for _ in client.watch_stream("/silent", {"watch": "1"}, inactivity_timeout_seconds=0.2):
                        pass
                assert time.monotonic() - start < 2
            finally:
                done.set()
                await client.close()

    run(main())


# --------------------------------------------------------------------------------------------------
# TLS with credentials from a kubeconfig (inline CA and client certificate data)


def _openssl(tmp: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_with_inline_ca_and_client_certificate(tmp_path: Path) -> None:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(tmp_path, "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=test-ca")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        (tmp_path / f"{name}.ext").write_text(ext + "\n")
        _openssl(tmp_path, "req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}-cn")
        _openssl(
            tmp_path,
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "1",
            "-extfile",
            f"{name}.ext",
        )
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tmp_path / "ca.crt"))
    server_ctx.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    peers: list[Any] = []

    async def whoami(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peercert"))
        return web.json_response({"ok": True})

    def b64(name: str) -> str:
        return base64.b64encode((tmp_path / name).read_bytes()).decode()

    async def main() -> None:
        async with serve([("GET", "/version", whoami)], ssl_context=server_ctx) as url:
            config = tmp_path / "kubeconfig"
            config.write_text(
                yaml.safe_dump(
                    {
                        "clusters": [
                            {"name": "c", "cluster": {"server": url, "certificate-authority-data": b64("ca.crt")}}
                        ],
                        "users": [
                            {
                                "name": "u",
                                "user": {
                                    "client-certificate-data": b64("client.crt"),
                                    "client-key-data": b64("client.key"),
                                },
                            }
                        ],
                        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                        "current-context": "x",
                    }
                )
            )
            creds = load_credentials(str(config))
            assert creds.client_cert_file and Path(creds.client_cert_file).stat().st_mode & 0o777 == 0o600
            assert Path(creds.client_cert_file).read_bytes() == (tmp_path / "client.crt").read_bytes()
            client = KubeClient(creds)
            try:
                assert await client.request("GET", "/version") == (200, {"ok": True})
            finally:
                await client.close()
            # without the CA the server is not trusted: a ConfigError that names the fix
            client = KubeClient(Credentials(server=url, source="test"))
            try:
                with pytest.raises(ConfigError, match="certificate-authority"):
                    await client.request("GET", "/version")
            finally:
                await client.close()

    run(main())
    assert dict(x[0] for x in peers[0]["subject"])["commonName"] == "client-cn"


# --------------------------------------------------------------------------------------------------
# load_credentials


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def two_contexts(**user: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "prod",
                "cluster": {
                    "server": "https://prod:6443/",
                    "certificate-authority-data": base64.b64encode(b"PROD-CA").decode(),
                },
            },
            {
                "name": "dev",
                "cluster": {
                    "server": "https://dev:6443",
                    "certificate-authority": "ca/dev.crt",
                    "insecure-skip-tls-verify": True,
                },
            },
        ],
        "users": [{"name": "ops", "user": {"token": "prod-token"}}, {"name": "me", "user": user}],
        "contexts": [
            {"name": "prod", "context": {"cluster": "prod", "user": "ops", "namespace": "leitstand-system"}},
            {"name": "dev", "context": {"cluster": "dev", "user": "me"}},
        ],
        "current-context": "prod",
    }


def test_kubeconfig_token_inline_ca_and_current_context(tmp_path: Path) -> None:
    creds = load_credentials(write_config(tmp_path / "config", two_contexts(token="x")))
    assert creds.server == "https://prod:6443"
    assert creds.token == "prod-token" and creds.token_file is None
    assert creds.ca_pem == b"PROD-CA"
    assert creds.namespace == "leitstand-system"
    assert not creds.insecure
    assert "prod-token" not in repr(creds)  # never printed


def test_kubeconfig_token_file_and_ca_file_are_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "ca").mkdir()
    (tmp_path / "ca" / "dev.crt").write_bytes(b"DEV-CA")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "tok").write_text("from-file\n")
    config = write_config(tmp_path / "config", two_contexts(tokenFile="secrets/tok"))
    creds = load_credentials(config, context="dev")
    assert creds.server == "https://dev:6443"
    assert creds.ca_pem == b"DEV-CA"
    assert creds.token == "from-file"
    assert creds.token_file == str(tmp_path / "secrets" / "tok")
    assert creds.insecure
    assert creds.current_token() == "from-file"


def test_kubeconfig_client_certificate_files_and_data(tmp_path: Path) -> None:
    (tmp_path / "ca").mkdir()
    (tmp_path / "ca" / "dev.crt").write_bytes(b"DEV-CA")
    (tmp_path / "me.crt").write_bytes(b"CERT")
    (tmp_path / "me.key").write_bytes(b"KEY")
    creds = load_credentials(
        write_config(tmp_path / "a", two_contexts(**{"client-certificate": "me.crt", "client-key": "me.key"})),
        context="dev",
    )
    assert (creds.client_cert_file, creds.client_key_file) == (str(tmp_path / "me.crt"), str(tmp_path / "me.key"))
    assert creds.token is None
    data = {
        "client-certificate-data": base64.b64encode(b"CERT-DATA").decode(),
        "client-key-data": base64.b64encode(b"KEY-DATA").decode(),
    }
    creds = load_credentials(write_config(tmp_path / "b", two_contexts(**data)), context="dev")
    assert creds.client_cert_file and creds.client_key_file
    assert Path(creds.client_cert_file).read_bytes() == b"CERT-DATA"
    assert Path(creds.client_key_file).read_bytes() == b"KEY-DATA"
    assert Path(creds.client_key_file).stat().st_mode & 0o777 == 0o600
    assert Path(creds.client_key_file).parent.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda c: c.pop("current-context"), "no current-context"),
        (lambda c: c.update({"current-context": "nope"}), "no entry named 'nope' under contexts"),
        (lambda c: c["contexts"][0]["context"].update(user="ghost"), "no entry named 'ghost' under users"),
        (lambda c: c["clusters"][0]["cluster"].pop("server"), "cluster 'prod' has no server"),
        (
            lambda c: c["clusters"][0]["cluster"].update({"certificate-authority-data": "%%%"}),
            "certificate-authority-data is not valid base64",
        ),
        (
            lambda c: c["clusters"][0]["cluster"].update(
                {"certificate-authority-data": None, "certificate-authority": "missing.crt"}
            ),
            "certificate-authority .*missing.crt cannot be read",
        ),
        (lambda c: c["users"][0].update(user={"exec": {"command": "aws"}}), "authenticates with 'exec'"),
        (lambda c: c["users"][0].update(user={"client-certificate-data": "Q0VSVA=="}), "add client-key"),
        (lambda c: c["users"][0].update(user={"tokenFile": "nowhere"}), "token file .*nowhere cannot be read"),
    ],
)
def test_kubeconfig_errors_name_the_file_and_the_key(
    tmp_path: Path, edit: Callable[[dict[str, Any]], Any], expected: str
) -> None:
    config = two_contexts(token="x")
    edit(config)
    path = write_config(tmp_path / "broken", config)
    with pytest.raises(ConfigError, match=expected) as caught:
        load_credentials(path)
    assert str(path) in str(caught.value)


def test_kubeconfig_that_is_not_a_mapping_or_missing(tmp_path: Path) -> None:
    (tmp_path / "list").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_credentials(tmp_path / "list")
    with pytest.raises(ConfigError, match="cannot read it"):
        load_credentials(tmp_path / "absent")


def test_kubeconfig_env_list_uses_the_first_existing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = write_config(tmp_path / "first", two_contexts(token="x"))
    second = two_contexts(token="x")
    second["current-context"] = "dev"
    write_config(tmp_path / "second", second)
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(tmp_path / "absent"), str(first), str(tmp_path / "second")]))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # ignored: $KUBECONFIG comes first
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    assert load_credentials().server == "https://prod:6443"
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="none of its files exists"):
        load_credentials()


def make_service_account(root: Path) -> Path:
    sa = root / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text("sa-token\n")
    (sa / "ca.crt").write_bytes(b"CLUSTER-CA")
    (sa / "namespace").write_text("leitstand-system")
    return sa


def test_in_cluster_service_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setattr(kubeclient, "SERVICE_ACCOUNT_DIR", make_service_account(tmp_path))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    creds = load_credentials()
    assert creds.server == "https://10.96.0.1:443"
    assert creds.token == "sa-token"
    assert creds.token_file == str(tmp_path / "serviceaccount" / "token")  # re-read when it rotates
    assert creds.ca_pem == b"CLUSTER-CA"
    assert creds.namespace == "leitstand-system"
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    assert load_credentials().server == "https://[fd00::1]:443"
    (tmp_path / "serviceaccount" / "token").unlink()
    with pytest.raises(ConfigError, match="automountServiceAccountToken"):
        load_credentials()


def test_home_kube_config_is_the_last_resort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="no Kubernetes credentials"):
        load_credentials()
    (tmp_path / ".kube").mkdir()
    write_config(tmp_path / ".kube" / "config", two_contexts(token="x"))
    assert load_credentials().token == "prod-token"


def test_client_rejects_nonsense_limits() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        KubeClient(Credentials(server="http://x"), max_in_flight=0)


def test_transport_errors_are_aiohttp_independent() -> None:
    err = TransportError("GET", "/x", 4, aiohttp.ServerDisconnectedError())
    assert "kube-apiserver is up" in str(err) and err.attempts == 4
