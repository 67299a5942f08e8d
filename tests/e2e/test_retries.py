"""Safe retries end to end (SECURITY_GOALS R3): only what provably did not reach the upstream, or
what an admin marked idempotent, is sent again, within a budget that prevents retry storms.

`Faults` wraps a real upstream app and counts the tools/call requests that reached it; it can
drop the connection after reading a request, or answer 503. `Relay` is a TCP relay in front of
an upstream that can stop listening (connections refused) and start again on the same port.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
import orjson
import pytest
import sqlalchemy as sa
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.gateway.test_inflight import call, error_of
from tests.harness import Changes, Gateway, running_gateway
from tests.servers import serve
from tests.upstreams import echo_upstream
from tollhouse.gateway.errors import UPSTREAM_UNAVAILABLE
from tollhouse.gateway.settings import LimitsSettings, UpstreamDefaults
from tollhouse.registry.migrate import create_engine_for, database_url_for

pytestmark = pytest.mark.anyio


@dataclass
class Faults:
    """ASGI wrapper: counts tools/call requests per tool; drops or refuses some on demand."""

    app: ASGIApp
    calls: dict[str, int] = field(default_factory=dict)
    methods: list[str] = field(default_factory=list)
    drop: dict[str, int] = field(default_factory=dict)  # tool -> how many more to drop after reading
    unavailable: set[str] = field(default_factory=set)  # tools answered 503
    barrier: int = 0  # hold 503 answers until this many requests wait (all fail at once)
    waiting: int = 0
    opened: anyio.Event = field(default_factory=anyio.Event)
    answered: list[str] = field(default_factory=list)  # methods whose answer the app has sent
    changes: Changes = field(default_factory=Changes)  # noted at every request seen and answered

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = orjson.loads(body)
        method = request.get("method") if isinstance(request, dict) else None
        self.methods.append(str(method))
        tool = request["params"]["name"] if method == "tools/call" else None
        if tool is not None:
            self.calls[tool] = self.calls.get(tool, 0) + 1
        self.changes.note()
        if tool is not None:
            if self.drop.get(tool):
                self.drop[tool] -= 1
                # The request was read; the connection dies before the answer is complete.
                headers = [(b"content-type", b"application/json"), (b"content-length", b"64")]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": b"{", "more_body": True})
                return
            if tool in self.unavailable:
                self.waiting += 1
                if self.waiting >= self.barrier:
                    self.opened.set()
                await self.opened.wait()
                await send({"type": "http.response.start", "status": 503, "headers": []})
                await send({"type": "http.response.body", "body": b"busy"})
                return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
        self.answered.append(str(method))
        self.changes.note()


class Relay:
    """A TCP relay on a fixed loopback port to `target_port`; `stop()` makes connects fail (refused)."""

    def __init__(self, tg: anyio.abc.TaskGroup, target_port: int) -> None:
        self._tg = tg
        self._target = target_port
        self.port = 0
        self._scope: anyio.CancelScope | None = None
        self._stopped: anyio.Event | None = None

    async def start(self) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self.port)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610
        scope, stopped = anyio.CancelScope(), anyio.Event()
        self._scope, self._stopped = scope, stopped

        async def run() -> None:
            try:
                with scope:
                    async with listener:
                        await listener.serve(self._relay)
            finally:
                stopped.set()

        self._tg.start_soon(run)

    async def stop(self) -> None:
        """Close the listener and every relayed connection; new connects are refused."""
        assert self._scope is not None and self._stopped is not None
        self._scope.cancel()
        await self._stopped.wait()

    async def _relay(self, client: anyio.abc.SocketStream) -> None:
        async with client, await anyio.connect_tcp("127.0.0.1", self._target) as upstream:

            async def pump(a: anyio.abc.SocketStream, b: anyio.abc.SocketStream) -> None:
                try:
                    async for chunk in a:
                        await b.send(chunk)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass
                finally:
                    tg.cancel_scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(pump, client, upstream)
                tg.start_soon(pump, upstream, client)


def usage_events(tmp_path: Path) -> list[dict[str, Any]]:
    """The data of every committed usage event."""
    engine = create_engine_for(database_url_for(None, str(tmp_path / "data")))
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.text("select event from usage_events")).all()
        return [orjson.loads(row.event)["data"] for row in rows]
    finally:
        engine.dispose()


async def committed_usage(gw: Gateway) -> None:
    """Every usage event the gateway accepted so far is committed (its report flushes them first)."""
    assert (await gw.admin.get("/usage/report", params={"by": "tool"})).status_code == 200


class NotingHandler(logging.Handler):
    """Keeps every log record and notes `changes` at each, so a test can wait for one."""

    def __init__(self, changes: Changes) -> None:
        super().__init__()
        self.changes = changes
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.changes.note()


@contextlib.asynccontextmanager
async def noting(logger: str, changes: Changes) -> AsyncIterator[NotingHandler]:
    """While the block runs, every record of `logger` is kept and notes `changes`."""
    handler = NotingHandler(changes)
    logging.getLogger(logger).addHandler(handler)
    try:
        yield handler
    finally:
        logging.getLogger(logger).removeHandler(handler)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


async def test_a_call_whose_connection_was_refused_is_retried_and_succeeds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tollhouse.retries")
    app, _ = echo_upstream("up", subscriptions=False)
    faults = Faults(app.streamable_http_app())
    # Background traffic (the watch loop's re-syncs) waits 60 s after its first round, so only the
    # test's call meets the closed port; a long backoff gives the test time to reopen it.
    upstreams = UpstreamDefaults(retry_min_seconds=30, retry_max_seconds=60, retry_backoff_seconds=4)
    async with (
        noting("tollhouse.retries", faults.changes) as retries_log,
        serve(faults, path="/mcp") as url,
        anyio.create_task_group() as tg,
        running_gateway(tmp_path, upstreams=upstreams) as gw,
        httpx2.AsyncClient(trust_env=False, timeout=30) as http,
    ):
        relay = Relay(tg, port_of(url))
        await relay.start()
        await gw.add_server("up", f"http://127.0.0.1:{relay.port}/mcp")
        key = await gw.create_client("alice")
        # The watch found no subscription stream and synced all lists once more: the loop now sleeps.
        await faults.changes.until(
            lambda: "subscriptions/listen" in faults.methods and faults.answered.count("prompts/list") == 2
        )
        # One round trip through the gateway: it has read that answer, and its sync is over.
        assert (await gw.admin.get("/servers/up")).json()["health"]["status"] == "healthy"

        await relay.stop()
        answers: list[httpx2.Response] = []

        async def one() -> None:
            answers.append(await call(http, gw, key, "up__echo", text="hi"))
            faults.changes.note()

        tg.start_soon(one)
        await faults.changes.until(
            lambda: any("retrying echo" in r.getMessage() for r in retries_log.records)
        )
        assert "nothing sent" in retries_log.records[-1].getMessage()
        await relay.start()  # the same port, before the retry's pause is over
        await faults.changes.until(lambda: bool(answers))
        (answer,) = answers
        assert answer.json()["result"]["content"][0]["text"] == "hi"
        assert faults.calls == {"echo": 1}  # only the retry reached it
        await committed_usage(gw)
        (event,) = [e for e in usage_events(tmp_path) if e["tool"] == "echo"]
        assert (event["outcome"], event["attempts"]) == ("ok", 2)
        servers = (await gw.admin.get("/servers/up")).json()
        assert servers["breaker"]["consecutive_failures"] == 0
        await relay.stop()
        tg.cancel_scope.cancel()


async def test_a_dropped_call_is_retried_only_when_the_tool_is_marked_idempotent(tmp_path: Path) -> None:
    app, _ = echo_upstream("up")
    faults = Faults(app.streamable_http_app())
    async with (
        serve(faults, path="/mcp") as url,
        running_gateway(tmp_path) as gw,
        httpx2.AsyncClient(trust_env=False, timeout=30) as http,
    ):
        await gw.add_server("up", url)
        key = await gw.create_client("alice")

        faults.drop["echo"] = 1
        answer = await call(http, gw, key, "up__echo", text="once")
        error = error_of(answer)
        assert error is not None and error["code"] == UPSTREAM_UNAVAILABLE
        assert faults.calls == {"echo": 1}  # it may have run: never sent twice

        response = await gw.admin.put("/servers/up", json={"idempotent": ["ech*"]})
        assert response.status_code == 200, response.text
        assert (await gw.admin.get("/servers/up")).json()["idempotent"] == ["ech*"]
        faults.drop["echo"] = 1
        answer = await call(http, gw, key, "up__echo", text="twice")
        assert answer.json()["result"]["content"][0]["text"] == "twice"
        assert faults.calls == {"echo": 3}

        def attempts() -> list[tuple[str, int | None]]:
            return [(e["outcome"], e.get("attempts")) for e in usage_events(tmp_path) if e["tool"] == "echo"]

        await committed_usage(gw)
        assert len(attempts()) == 2
        assert sorted(attempts(), key=str) == sorted([("upstream_error", 1), ("ok", 2)], key=str)


async def test_an_upstream_answering_503_gets_no_retry_storm(tmp_path: Path) -> None:
    app, _ = echo_upstream("up")
    faults = Faults(app.streamable_http_app())
    # The breaker would soon stop all traffic; here it stays closed, so the budget alone holds.
    upstreams = UpstreamDefaults(
        retry_min_seconds=0.05, retry_max_seconds=0.5, breaker_threshold=1000, retry_backoff_seconds=0.5
    )
    limits = LimitsSettings(max_in_flight_per_principal=0)
    clients = 50
    async with (
        serve(faults, path="/mcp") as url,
        running_gateway(tmp_path, upstreams=upstreams, limits=limits) as gw,
        httpx2.AsyncClient(trust_env=False, timeout=30, limits=httpx2.Limits(max_connections=100)) as http,
    ):
        await gw.add_server("up", url, idempotent=["add"])
        key = await gw.create_client("alice")
        faults.unavailable = {"echo", "add"}

        for tool, arguments in (("echo", lambda i: {"text": f"t{i}"}), ("add", lambda i: {"a": i, "b": 1})):
            faults.barrier, faults.waiting, faults.opened = clients, 0, anyio.Event()
            answers: list[httpx2.Response] = []

            async def one(
                i: int, tool: str = tool, arguments: Any = arguments, answers: list[Any] = answers
            ) -> None:
                answers.append(await call(http, gw, key, f"up__{tool}", **arguments(i)))

            async with anyio.create_task_group() as tg:
                for i in range(clients):
                    tg.start_soon(one, i)
            assert all((error_of(a) or {}).get("code") == UPSTREAM_UNAVAILABLE for a in answers)
            assert len(answers) == clients
            seen = faults.calls[tool]
            assert seen <= 1.2 * clients, (tool, seen)
            if tool == "echo":
                assert seen == clients  # not idempotent: a 503 came after the request was sent
            else:
                assert seen > clients  # idempotent: some were retried, within the budget
