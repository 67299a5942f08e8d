"""The connection-level receive deadline and head size limit, on real sockets against real uvicorn servers.

A tiny ASGI app (echo the body's length; stream chunks for longer than any deadline) is served with
the gateway's HTTP protocol through `tests.servers.serve(limits=...)`; raw TCP clients trickle bytes.
Elapsed times are the feature itself (dropped within the deadline + 1 s, never before the deadline),
not performance figures.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import httpx2
import pytest
from starlette.types import Receive, Scope, Send

from tests.harness import running_gateway
from tests.servers import serve
from tollhouse.gateway.receive_deadline import ReceiveDeadlineProtocol
from tollhouse.gateway.serve import uvicorn_config
from tollhouse.gateway.settings import LimitsSettings, Settings

pytestmark = pytest.mark.anyio

HEAD_S, GAP_S, BODY_S = 0.5, 0.5, 1.5
LIMITS = LimitsSettings(
    header_timeout_seconds=HEAD_S,
    receive_timeout_seconds=GAP_S,
    body_timeout_seconds=BODY_S,
    max_header_bytes=1024,
)
STREAM_CHUNKS, STREAM_EVERY_S = 20, 0.1  # 2 s of streaming: longer than every deadline above


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """`/stream`: read the body, then stream STREAM_CHUNKS events; anything else: `got <body length>`."""
    if scope["type"] == "lifespan":
        await receive()  # lifespan.startup
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/stream":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for i in range(STREAM_CHUNKS):
            await send({"type": "http.response.body", "body": f"data: {i}\n\n".encode(), "more_body": True})
            # The stream's pace; a client that goes away ends it at once.
            with anyio.move_on_after(STREAM_EVERY_S):
                if (await receive())["type"] == "http.disconnect":
                    return
        await send({"type": "http.response.body", "body": b""})
        return
    payload = f"got {len(body)}".encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


@asynccontextmanager
async def server(limits: LimitsSettings = LIMITS) -> AsyncIterator[tuple[str, int]]:
    async with serve(app, limits=limits) as url:
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port)


async def read_until_closed(stream: anyio.abc.ByteStream, hung_up: anyio.Event | None = None) -> bytes:
    """Everything the server sends until it closes the connection (then `hung_up` is set)."""
    data = b""
    while True:
        try:
            data += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            if hung_up is not None:
                hung_up.set()
            return data


async def trickle(stream: anyio.abc.ByteStream, data: bytes, every: float, hung_up: anyio.Event) -> None:
    """Send `data` one byte at a time, `every` seconds apart, until done or the server hangs up."""
    for i in range(len(data)):
        try:
            await stream.send(data[i : i + 1])
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return
        # A slow client's pace; the server hanging up ends it at once.
        with anyio.move_on_after(every):
            await hung_up.wait()
        if hung_up.is_set():
            return


async def stays_open(stream: anyio.abc.ByteStream, seconds: float) -> None:
    """The server keeps an idle connection open, and silent, for `seconds`."""
    with anyio.move_on_after(seconds):
        try:
            unexpected = await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
            raise AssertionError("the server closed the connection during the idle gap") from exc
        raise AssertionError(f"the server sent {unexpected!r} on an idle connection")


async def slow_client(
    address: tuple[str, int], first: bytes, rest: bytes, every: float
) -> tuple[bytes, float]:
    """Send `first` at once, trickle `rest`; returns what the server sent and the seconds from the first
    byte to the server's close."""
    with anyio.fail_after(15):
        async with await anyio.connect_tcp(*address) as stream, anyio.create_task_group() as tg:
            started = time.monotonic()
            if first:
                await stream.send(first)
            hung_up = anyio.Event()
            tg.start_soon(trickle, stream, rest, every, hung_up)
            answer = await read_until_closed(stream, hung_up)
            elapsed = time.monotonic() - started
            tg.cancel_scope.cancel()
    return answer, elapsed


def head(path: str = "/echo", method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\n{extra}\r\n".encode()


async def test_a_head_sent_one_byte_at_a_time_is_answered_408_and_closed_at_the_deadline() -> None:
    async with server() as address:
        answer, elapsed = await slow_client(address, b"", head(), every=0.1)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"connection: close" in answer.lower()
    assert HEAD_S - 0.05 <= elapsed <= HEAD_S + 1, elapsed


async def test_a_connection_that_sends_nothing_is_closed_without_an_answer() -> None:
    async with server() as address, await anyio.connect_tcp(*address) as stream:
        started = time.monotonic()
        with anyio.fail_after(15):
            answer = await read_until_closed(stream)
        elapsed = time.monotonic() - started
    assert answer == b""
    assert elapsed <= HEAD_S + 1, elapsed


async def test_blank_lines_do_not_hold_a_connection() -> None:
    # llhttp skips CRLFs between messages and every byte cancels uvicorn's keep-alive timer.
    async with server() as address:
        answer, elapsed = await slow_client(address, b"", b"\r\n" * 50, every=0.1)
    assert answer == b""  # no request began: nothing to answer
    assert elapsed <= HEAD_S + 1, elapsed


async def test_a_body_trickled_fast_enough_for_the_gap_is_cut_by_the_total_bound() -> None:
    async with server() as address:
        first = head("/echo", "POST", "Content-Type: application/json\r\nContent-Length: 100\r\n")
        answer, elapsed = await slow_client(address, first, b"x" * 100, every=0.1)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert BODY_S - 0.05 <= elapsed <= BODY_S + 1, elapsed


async def test_a_body_that_stops_arriving_is_cut_after_the_gap() -> None:
    async with server() as address:
        first = head("/echo", "POST", "Content-Length: 100\r\n") + b"only ten b"
        answer, elapsed = await slow_client(address, first, b"", every=0.1)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert GAP_S - 0.05 <= elapsed <= GAP_S + 1, elapsed


async def test_normal_requests_are_served_while_slow_clients_hang_on() -> None:
    async with server() as address, anyio.create_task_group() as tg:
        slow: list[bytes] = []

        async def hang_on() -> None:
            answer, _ = await slow_client(address, b"", head(), every=0.2)
            slow.append(answer)

        for _ in range(20):
            tg.start_soon(hang_on)
        async with httpx2.AsyncClient(base_url=f"http://{address[0]}:{address[1]}", trust_env=False) as http:
            for i in range(5):
                response = await http.post("/echo", content=b"y" * (1000 * i))
                assert response.status_code == 200
                assert response.text == f"got {1000 * i}"
    assert len(slow) == 20 and all(a.startswith(b"HTTP/1.1 408 ") for a in slow)


async def test_a_head_over_the_size_limit_gets_431() -> None:
    async with server() as address:
        for extra in ("X-Big: " + "b" * 1100 + "\r\n", "".join(f"X-{i}: {'c' * 20}\r\n" for i in range(60))):
            with anyio.fail_after(10):
                async with await anyio.connect_tcp(*address) as stream:
                    await stream.send(head(extra=extra))
                    answer = await read_until_closed(stream)
            assert answer.startswith(b"HTTP/1.1 431 "), answer


async def test_a_head_that_never_ends_is_refused_once_it_passes_the_size_limit() -> None:
    # httptools buffers an unfinished header value without bound: the raw count stops it.
    async with server() as address, await anyio.connect_tcp(*address) as stream:
        with anyio.fail_after(10):
            await stream.send(b"GET / HTTP/1.1\r\nX-Endless: ")
            answer = b""
            try:
                for _ in range(100):
                    await stream.send(b"z" * 100)
            except (anyio.BrokenResourceError, OSError):
                pass
            answer = await read_until_closed(stream)
    assert answer.startswith(b"HTTP/1.1 431 "), answer


async def test_a_head_just_under_the_limit_is_served() -> None:
    async with server() as address, await anyio.connect_tcp(*address) as stream:
        request = head(extra="X-Fill: " + "f" * 800 + "\r\nConnection: close\r\n")
        with anyio.fail_after(10):
            await stream.send(request)
            answer = await read_until_closed(stream)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"got 0"), answer


async def test_a_response_streaming_longer_than_every_deadline_is_not_cut() -> None:
    async with server() as address, await anyio.connect_tcp(*address) as stream:
        body = b'{"stream": true}'
        request = head("/stream", "POST", f"Content-Length: {len(body)}\r\nConnection: close\r\n") + body
        with anyio.fail_after(15):
            await stream.send(request)
            answer = await read_until_closed(stream)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert all(f"data: {i}\n\n".encode() in answer for i in range(STREAM_CHUNKS)), answer
    assert answer.endswith(b"0\r\n\r\n")  # the chunked body's end: the server finished it


async def test_keep_alive_the_head_deadline_starts_at_the_next_requests_first_byte() -> None:
    # Semantics: between requests uvicorn's keep-alive timeout (5 s here) governs the idle gap;
    # the head deadline runs from the next request's first byte, not from the previous answer.
    async with server() as address, await anyio.connect_tcp(*address) as stream:
        with anyio.fail_after(15):
            await stream.send(head())
            first = await stream.receive()
            assert first.startswith(b"HTTP/1.1 200 ") and first.endswith(b"got 0"), first
            await stays_open(stream, HEAD_S * 2)  # an idle gap longer than the head deadline
            await stream.send(head())
            second = await stream.receive()
            assert second.startswith(b"HTTP/1.1 200 ") and second.endswith(b"got 0"), second
            await stays_open(stream, HEAD_S * 2)
            async with anyio.create_task_group() as tg:
                started = time.monotonic()
                hung_up = anyio.Event()
                tg.start_soon(trickle, stream, head(), 0.1, hung_up)
                third = await read_until_closed(stream, hung_up)
                elapsed = time.monotonic() - started
                tg.cancel_scope.cancel()
    assert third.startswith(b"HTTP/1.1 408 "), third
    assert HEAD_S - 0.05 <= elapsed <= HEAD_S + 1, elapsed


async def test_pipelined_requests_are_all_answered() -> None:
    async with server() as address, await anyio.connect_tcp(*address) as stream:
        body = b"z" * 50
        post = head("/echo", "POST", f"Content-Length: {len(body)}\r\n") + body
        last = head(extra="Connection: close\r\n")
        with anyio.fail_after(10):
            await stream.send(head("/stream") + post + last)
            answer = await read_until_closed(stream)
    assert answer.count(b"HTTP/1.1 200 ") == 3, answer
    assert b"data: 19" in answer and b"got 50" in answer and answer.endswith(b"got 0")


async def test_the_gateway_drops_a_client_trickling_its_head(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, limits=LimitsSettings(header_timeout_seconds=HEAD_S)) as gw:
        host, port = gw.base_url.removeprefix("http://").split(":")
        request = head("/mcp", "POST", "Content-Type: application/json\r\nContent-Length: 2\r\n") + b"{}"
        answer, elapsed = await slow_client((host, int(port)), b"", request, every=0.1)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert elapsed <= HEAD_S + 1, elapsed


def test_tollhouse_serve_runs_the_protocol_bound_to_its_limits() -> None:
    limits = LimitsSettings(header_timeout_seconds=3.0, max_header_bytes=2048)
    config = uvicorn_config(app, Settings(limits=limits))
    protocol = config.http
    assert isinstance(protocol, type) and issubclass(protocol, ReceiveDeadlineProtocol)
    assert protocol.limits == limits
    assert ReceiveDeadlineProtocol.limits == LimitsSettings()  # binding makes a new class
