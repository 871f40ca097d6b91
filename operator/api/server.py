"""The read API on uvicorn, inside `leitstand run`'s main event loop: bound, started and stopped.

Called by `run.serve` once at start (before the kernels compile, so `/healthz` answers at once and
`/readyz` says 503 until the scheduler is ready) and once at the end. uvicorn runs as a task of the
loop that also runs the scheduler, the informers and the binder — no thread, no second copy of the
state. Its own signal handling is switched off: `run` owns SIGTERM/SIGINT and stops the server
through `stop()` (in-flight requests get `GRACE_SECONDS`).

What this must not do: end the process. A port that cannot be bound (another `leitstand run` on the
same machine, a typo in the address) is logged as an error and the scheduler runs without its API;
a Kubernetes readiness probe on `/readyz` then shows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator

import uvicorn

from leitstand.operator.api.app import Renderer, create_app
from leitstand.operator.api.auth import Authorizer, KubeReviewer, Requester
from leitstand.operator.service.config import ApiSettings
from leitstand.operator.service.loop import Scheduler

log = logging.getLogger(__name__)

GRACE_SECONDS = 3.0


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers (it would replace `run`'s, then re-raise the signal)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29 calls this instead
        return


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); OSError names what failed.

    Made with an explicit IPPROTO_TCP and TCP_NODELAY: asyncio sets TCP_NODELAY only on sockets whose
    `proto` says TCP, and `socket.create_server` leaves it 0 — then every keep-alive response waits
    40 ms for the client's delayed ACK (Nagle), measured at 48 ms per request instead of 1 ms."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         proto=socket.IPPROTO_TCP)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class ApiServer:
    def __init__(self, server: uvicorn.Server, sock: socket.socket, task: asyncio.Task[None]) -> None:
        self.server = server
        self.sock = sock
        self.task = task
        address = sock.getsockname()
        self.host, self.port = str(address[0]), int(address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        self.server.should_exit = True
        done, _ = await asyncio.wait([self.task], timeout=GRACE_SECONDS + 1)
        if not done:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


async def start(settings: ApiSettings, scheduler: Scheduler, client: Requester,
                metrics: Renderer | None = None) -> ApiServer | None:
    """Serve the API for `scheduler` (callers reviewed through `client`); None when disabled or the
    address cannot be bound."""
    if not settings.enabled:
        log.info("HTTP API disabled (api.enabled: false)")
        return None
    try:
        sock = bind(settings.host, settings.port)
    except OSError as exc:
        log.error("HTTP API not served: cannot listen on %s:%s (%s); set api.host/api.port in the config",
                  settings.host, settings.port, exc)
        return None
    authorizer = Authorizer(KubeReviewer(client), ttl_seconds=settings.review_cache_seconds,
                            capacity=settings.review_cache_entries)
    app = create_app(scheduler, authorizer, settings, metrics=metrics)
    config = uvicorn.Config(
        app,
        log_config=None,  # our handlers (text or JSON lines), not uvicorn's
        access_log=False,  # one line per request would drown the cycle lines under load
        lifespan="off",
        timeout_graceful_shutdown=int(GRACE_SECONDS),
        timeout_keep_alive=30,
        server_header=False,
    )
    server = _Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]), name="api")
    task.add_done_callback(_report)
    api = ApiServer(server, sock, task)
    log.info("HTTP API on %s (OpenAPI at %s/docs)", api.url, api.url,
             extra={"fields": {"event": "api", "url": api.url}})
    return api


def _report(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("HTTP API stopped: %r", task.exception())
