"""A redis-server of a test's own, for tests that stop Redis (the shared one is never stopped).

`private_redis(port)` starts the binary on `port` with no persistence and returns once the server
itself says it is ready (its "Ready to accept connections" log line): no polling, no sleeps.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest

__all__ = ["free_port", "private_redis"]

READY = b"Ready to accept connections"


def free_port() -> int:
    """A loopback port nobody listens on now (the server is started on it, and again after a kill)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def private_redis(port: int) -> AsyncIterator[anyio.abc.Process]:
    """A redis-server on `port`; yields its process (kill it to make Redis die mid-run)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    process = await anyio.open_process(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stderr=None,
    )
    try:
        assert process.stdout is not None
        seen = b""
        with anyio.fail_after(10):
            async for chunk in process.stdout:
                seen = (seen + chunk)[-4096:]
                if READY in seen:
                    break
            else:
                raise RuntimeError("redis-server exited before it was ready")
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        with anyio.CancelScope(shield=True):
            await process.wait()
            await process.aclose()
