"""Run ASGI apps on real loopback sockets for tests.

`serve(app)` binds 127.0.0.1:0 itself, hands the socket to uvicorn, waits for
`server.started` under a deadline and stops the server on the way out, so tests use the
port actually bound and never race for a free one.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import anyio
import uvicorn
from starlette.types import ASGIApp

from tollhouse.gateway.receive_deadline import receive_deadline_protocol
from tollhouse.gateway.settings import LimitsSettings


class _Server(uvicorn.Server):
    """uvicorn.Server that sets an event once startup has finished (or failed)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = anyio.Event()

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        # No signal handlers in tests: sse-starlette finds "the" uvicorn server through the
        # SIGTERM handler and, when it exits, ends every SSE stream of every server in the
        # loop, so stopping one test upstream would break streams of the others.
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self.ready.set()


def loopback_socket(port: int = 0) -> socket.socket:
    """A TCP socket bound to 127.0.0.1 (ephemeral port by default), for `serve(..., sock=)`.

    Binding first lets a test learn the port before it builds the app (a gateway's public URL).
    """
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says it is TCP; with protocol 0 every response waits on Nagle (~44 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


@asynccontextmanager
async def serve(
    app: ASGIApp,
    *,
    path: str = "",
    port: int = 0,
    sock: socket.socket | None = None,
    limits: LimitsSettings | None = None,
) -> AsyncIterator[str]:
    """Serve `app` on a loopback port (ephemeral by default, or `sock`); yields its base URL plus `path`.

    With `limits` (a gateway's), uvicorn runs the gateway's HTTP protocol with its receive deadline
    and head size limit, as `tollhouse serve` does; without, plain httptools (test upstreams).
    """
    sock = sock or loopback_socket(port)
    port = sock.getsockname()[1]
    # A short graceful-shutdown bound: leaving the block is how tests kill an upstream, and
    # long-lived streams (a gateway's watch of this server) must not hold it open.
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="on",
        loop="none",
        http="httptools" if limits is None else receive_deadline_protocol(limits),
        timeout_graceful_shutdown=1,
    )
    server = _Server(config)
    # uvicorn installs signal handlers only in run(); serve() inside a task group is safe.
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(10):
            await server.ready.wait()
        if not server.started:
            raise RuntimeError("the test server failed to start")
        try:
            yield f"http://127.0.0.1:{port}{path}"
        finally:
            server.should_exit = True
    sock.close()
