"""Shared fixtures: a clean environment, the anyio backend, and service URLs."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import anyio
import pytest
import redis.asyncio
from sse_starlette.sse import AppStatus


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Strip TOLLHOUSE_* (but TOLLHOUSE_TEST_*) and proxy variables for every test."""
    for key in list(os.environ):
        upper = key.upper()
        if (upper.startswith("TOLLHOUSE_") and not upper.startswith("TOLLHOUSE_TEST_")) or upper in {
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "NO_PROXY",
        }:
            monkeypatch.delenv(key, raising=False)
    yield


@pytest.fixture(scope="session", autouse=True)
def independent_sse_servers() -> None:
    """Stopping one in-process upstream must not end the SSE streams of the others.

    sse-starlette drains every SSE response in the process when "the" uvicorn server shuts
    down; tests run several servers in one process, so that drain is turned off.
    """
    AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]


@pytest.fixture
def anyio_backend() -> str:
    """uvicorn runs only on asyncio."""
    return "asyncio"


def _service_url(var: str) -> str:
    url = os.environ.get(var)
    if url:
        return url
    if os.environ.get("TOLLHOUSE_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{var} is required in CI but not set")
    pytest.skip(f"{var} not set")


@pytest.fixture
def postgres_url() -> str:
    """Base URL of the shared PostgreSQL server (tests create and drop their own database)."""
    return _service_url("TOLLHOUSE_TEST_POSTGRES_URL")


@pytest.fixture
def redis_url() -> str:
    """URL of the shared Redis server (tests use their own key prefix)."""
    return _service_url("TOLLHOUSE_TEST_REDIS_URL")


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own on the shared Redis, whose keys are removed afterwards."""
    prefix = f"th-test-{secrets.token_hex(6)}"
    yield prefix

    async def cleanup() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            keys = [k async for k in client.scan_iter(f"{prefix}*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()

    anyio.run(cleanup)
