"""The example servers' shared command line: bind, serve, announce READY, stop on a signal.

Both servers print exactly one line, `READY http://HOST:PORT/mcp`, once uvicorn is
accepting connections, so a parent process (the demo, the tests) can read the real
port when it asked for port 0. SIGTERM and SIGINT stop the server gracefully and the
process exits with status 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import anyio
import uvicorn
from starlette.types import ASGIApp


class _Server(uvicorn.Server):
    """uvicorn.Server that reports startup on an event and leaves signals to the caller."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = anyio.Event()

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises a captured SIGTERM after shutdown, which would kill the
        # process with status -15; serve_app() handles the signals itself instead.
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self.ready.set()


def parse_args(argv: Sequence[str] | None, description: str) -> argparse.Namespace:
    """Parse `[--host HOST] [--port PORT]` (port 0 picks an ephemeral port)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default: 0)")
    return parser.parse_args(argv)


async def serve_app(app: ASGIApp, host: str, port: int) -> None:
    """Serve `app` on host:port, print `READY http://HOST:PORT/mcp`, and return after SIGTERM or SIGINT.

    Raises:
        SystemExit: The application failed to start.
    """
    await serve_built(lambda origin: app, host, port, ready_path="/mcp")


async def serve_built(
    build: Callable[[str], ASGIApp],
    host: str,
    port: int,
    *,
    ready_path: str,
    public_url: str | None = None,
    graceful_seconds: int | None = None,
) -> None:
    """Bind host:port, build the app for its origin, serve it, print `READY {origin}{ready_path}`,
    and return after SIGTERM or SIGINT.

    `build` gets `public_url` when given, else `http://HOST:PORT` with the port actually bound
    (an A2A agent's card names its own absolute URLs). `graceful_seconds` bounds the shutdown
    (an open event stream must not keep the process alive).

    Raises:
        SystemExit: The application failed to start.
    """
    sock = socket.socket(
        socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP
    )
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    netloc = f"[{host}]:{bound_port}" if ":" in host else f"{host}:{bound_port}"
    config = uvicorn.Config(
        build(public_url or f"http://{netloc}"),
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=graceful_seconds,
    )
    server = _Server(config)

    async def stop_on_signal() -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                server.should_exit = True
                return

    async def announce() -> None:
        await server.ready.wait()
        if server.started:
            print(f"READY http://{netloc}{ready_path}", flush=True)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_on_signal)
            tg.start_soon(announce)
            await server.serve([sock])
            tg.cancel_scope.cancel()
    finally:
        sock.close()
    if not server.started:
        raise SystemExit("the server failed to start")


def run_cli(build: Callable[[str], ASGIApp], description: str, argv: Sequence[str] | None = None) -> None:
    """Parse the command line, build the app for the chosen host and serve it until signalled."""
    args = parse_args(argv, description)
    # The SDK logs every session at INFO; an example server's terminal should stay quiet.
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("mcp").setLevel(logging.WARNING)
    anyio.run(serve_app, build(args.host), args.host, args.port)
