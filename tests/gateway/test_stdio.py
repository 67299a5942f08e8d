"""StdioUpstream against a real SDK server run as a child process (tests/stdio_server.py)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Literal

import anyio
import pytest

from tollhouse.gateway.errors import (
    METHOD_NOT_FOUND,
    UpstreamProtocolError,
    UpstreamRpcError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from tollhouse.gateway.jsonrpc_stream import list_all
from tollhouse.gateway.stdio import StdioUpstream
from tollhouse.registry.models import JSONObject, Upstream

pytestmark = pytest.mark.anyio

SERVER = Path(__file__).resolve().parent.parent / "stdio_server.py"
EraChoice = Literal["auto", "modern", "legacy"]
# "modern": the dual-era child found by the probe; "legacy": the same child, forced legacy.
ERAS: list[EraChoice] = ["modern", "legacy"]
STDERR_LOGGER = "tollhouse.upstreams.stdio"
UPSTREAM_FIELDS = {"connect_timeout_seconds", "call_timeout_seconds", "cwd"}


def stdio_upstream(*args: str, env: dict[str, str] | None = None, **fields: Any) -> Upstream:
    """A registered stdio upstream running tests/stdio_server.py with `args`."""
    fields.setdefault("call_timeout_seconds", 10.0)
    return Upstream(
        name="kid", transport="stdio", command=(sys.executable, str(SERVER), *args), env=env or {}, **fields
    )


@asynccontextmanager
async def running(
    *args: str, era: EraChoice = "auto", env: dict[str, str] | None = None, **options: Any
) -> AsyncIterator[StdioUpstream]:
    """A started StdioUpstream for the test server, stopped on the way out."""
    fields = {k: options.pop(k) for k in list(options) if k in UPSTREAM_FIELDS}
    connector = StdioUpstream(stdio_upstream(*args, env=env, **fields), era=era, **options)
    try:
        await connector.start()
        yield connector
    finally:
        await connector.aclose()


def connector_era(era: EraChoice) -> EraChoice:
    """The era to ask for: the probe finds modern by itself; legacy must be forced."""
    return "legacy" if era == "legacy" else "auto"


def call(tool: str, **arguments: Any) -> JSONObject:
    """tools/call params."""
    return {"name": tool, "arguments": arguments}


async def structured(connector: StdioUpstream, tool: str, **arguments: Any) -> Any:
    """Call a tool and return its structured result."""
    result = await connector.request("tools/call", call(tool, **arguments))
    return result["structuredContent"]["result"]


def gone(pid: int) -> bool:
    """True when no process (not even a zombie) has this pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


class StderrLog(logging.Handler):
    """Collects the child's stderr lines as logged, and lets a test await one."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self._waiting: list[tuple[str, anyio.Event]] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        self.lines.append(line)
        for text, event in self._waiting:
            if text in line:
                event.set()

    async def wait_for(self, text: str) -> None:
        """Return once a logged line contains `text`."""
        if any(text in line for line in self.lines):
            return
        event = anyio.Event()
        self._waiting.append((text, event))
        with anyio.fail_after(5):
            await event.wait()


@pytest.fixture
def stderr_log() -> Iterator[StderrLog]:
    """The child's stderr lines, as StdioUpstream logs them."""
    logger = logging.getLogger(STDERR_LOGGER)
    handler = StderrLog()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def ignore(method: str, params: JSONObject) -> None:
    """A watch callback for tests that only need the child's output drained."""


# -- era detection ---------------------------------------------------------------------


async def test_dual_era_child_is_detected_as_modern_via_server_discover() -> None:
    async with running() as connector:
        description = connector.description
        assert connector.era == "modern"
    assert description is not None
    assert description.protocol_version == "2026-07-28"
    assert description.server_info == {"name": "stdio-upstream", "version": "0.3.0"}
    assert description.instructions == "Stdio test upstream."
    assert "tools" in description.capabilities


async def test_legacy_only_child_falls_back_to_initialize() -> None:
    async with running("--legacy-only") as connector:
        assert connector.era == "legacy"
        assert connector.description is not None
        assert connector.description.protocol_version == "2025-11-25"
        assert await structured(connector, "echo", text="hi") == "hi"


async def test_child_that_never_answers_discover_is_legacy_after_the_probe_window() -> None:
    async with running("--silent-discover", connect_timeout_seconds=0.5) as connector:
        assert connector.era == "legacy"
        assert await structured(connector, "add", a=1, b=2) == 3


async def test_dual_era_child_slower_than_the_probe_window_is_still_modern() -> None:
    # initialize goes out while the probe is pending; the child answers the probe first.
    async with running(connect_timeout_seconds=0.01) as connector:
        assert connector.era == "modern"
        assert await structured(connector, "echo", text="late") == "late"


async def test_forced_legacy_era_initializes_the_dual_era_child() -> None:
    async with running(era="legacy") as connector:
        assert connector.era == "legacy"
        assert connector.description is not None
        assert connector.description.server_info["name"] == "stdio-upstream"


async def test_forced_modern_era_refuses_a_legacy_only_child() -> None:
    with pytest.raises(UpstreamUnavailable):
        async with running("--legacy-only", era="modern"):
            pass


# -- results, errors, progress -----------------------------------------------------------


@pytest.mark.parametrize("era", ERAS)
async def test_tool_results_pass_through_untouched(era: EraChoice) -> None:
    async with running(era=connector_era(era)) as connector:
        added = await connector.request("tools/call", call("add", a=2, b=3))
        failed = await connector.request("tools/call", call("fail", message="no such file"))
        tools = await connector.list_all("tools/list", "tools")
    assert added["structuredContent"] == {"result": 5}
    assert added["content"] == [{"type": "text", "text": "5"}]
    assert added["isError"] is False
    assert failed["isError"] is True
    assert failed["content"] == [{"type": "text", "text": "Error executing tool fail: no such file"}]
    assert {"echo", "add", "block", "env_probe"} <= {tool["name"] for tool in tools}
    if era == "modern":
        assert added["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "stdio-upstream"


@pytest.mark.parametrize("era", ERAS)
async def test_progress_is_relayed_only_when_it_increases(era: EraChoice) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with running(era=connector_era(era)) as connector:
        result = await connector.request(
            "tools/call", call("progress", steps=[1, 2, 2, 1, 3]), on_progress=on_progress
        )
    assert result["content"] == [{"type": "text", "text": "done"}]
    assert seen == [(1.0, 3.0, "at 1.0"), (2.0, 3.0, "at 2.0"), (3.0, 3.0, "at 3.0")]


async def test_unknown_method_is_an_rpc_error_with_its_code() -> None:
    async with running() as connector:
        with pytest.raises(UpstreamRpcError) as raised:
            await connector.request("nope/never", {})
    assert raised.value.code == METHOD_NOT_FOUND


async def test_legacy_server_requests_are_answered_ping_yes_elicitation_no() -> None:
    async with running(era="legacy") as connector:
        result = await connector.request("tools/call", call("ask_client"))
    assert result["content"][0]["text"] == f"pong; elicitation refused with {METHOD_NOT_FOUND}"


@pytest.mark.parametrize("era", ERAS)
async def test_oversized_message_fails_only_its_own_call(era: EraChoice) -> None:
    async with running(era=connector_era(era), max_message_bytes=20_000) as connector:
        with pytest.raises(UpstreamProtocolError):
            await connector.request("tools/call", call("big", size=50_000))
        assert await structured(connector, "big", size=10) == "x" * 10


# -- concurrency, cancellation, timeouts ---------------------------------------------------


@pytest.mark.parametrize("era", ERAS)
async def test_concurrent_calls_are_multiplexed_over_one_child(era: EraChoice) -> None:
    results: dict[int, Any] = {}
    pids: list[int] = []

    async def echo(i: int) -> None:
        results[i] = await structured(connector, "echo", text=f"call {i}")

    async def pid() -> None:
        pids.append(await structured(connector, "pid"))

    async with running(era=connector_era(era)) as connector:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i in range(20):
                    tg.start_soon(echo, i)
                for _ in range(5):
                    tg.start_soon(pid)
        own_pid = connector.pid
    assert results == {i: f"call {i}" for i in range(20)}
    assert set(pids) == {own_pid}


@pytest.mark.parametrize("era", ERAS)
async def test_cancelling_the_caller_cancels_the_call_in_the_child(
    era: EraChoice, stderr_log: StderrLog
) -> None:
    async with running(era=connector_era(era)) as connector, anyio.create_task_group() as watching:
        await watching.start(connector.watch, ignore)  # reads stderr while no call is pending
        async with anyio.create_task_group() as tg:
            tg.start_soon(connector.request, "tools/call", call("block", tag="A"))
            await stderr_log.wait_for("block A started")
            tg.cancel_scope.cancel()
        await stderr_log.wait_for("block A cancelled")
        assert await structured(connector, "echo", text="still here") == "still here"
        watching.cancel_scope.cancel()


@pytest.mark.parametrize("era", ERAS)
async def test_call_timeout_raises_upstream_timeout_and_cancels_in_the_child(
    era: EraChoice, stderr_log: StderrLog
) -> None:
    async with running(era=connector_era(era)) as connector, anyio.create_task_group() as watching:
        await watching.start(connector.watch, ignore)
        with pytest.raises(UpstreamTimeout) as raised:
            await connector.request("tools/call", call("block", tag="T"), timeout_seconds=0.5)
        await stderr_log.wait_for("block T cancelled")
        watching.cancel_scope.cancel()
    assert raised.value.data == {"server": "kid", "timeout_seconds": 0.5}


# -- the child's environment -----------------------------------------------------------


async def test_child_sees_only_the_configured_env_and_the_sdk_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TOLLHOUSE_CANARY_SECRET", "must-not-leak")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "must-not-leak-either")
    async with running(env={"ROOT": "./data"}) as connector:
        canary = await structured(connector, "env_probe", name="TOLLHOUSE_CANARY_SECRET")
        aws = await structured(connector, "env_probe", name="AWS_SECRET_ACCESS_KEY")
        root = await structured(connector, "env_probe", name="ROOT")
        path = await structured(connector, "env_probe", name="PATH")
    assert canary is None
    assert aws is None
    assert root == "./data"
    assert path == os.environ["PATH"]


async def test_child_runs_in_the_configured_cwd(tmp_path: Path) -> None:
    async with running(cwd=str(tmp_path)) as connector:
        assert await structured(connector, "cwd") == str(tmp_path)


# -- the child's lifetime ----------------------------------------------------------------


@pytest.mark.parametrize("era", ERAS)
async def test_child_that_exits_fails_pending_and_later_calls_and_ends_watch(era: EraChoice) -> None:
    watch_ended = anyio.Event()

    async def watch() -> None:
        with suppress(UpstreamUnavailable):
            await connector.watch(ignore)
        watch_ended.set()

    async with running(era=connector_era(era)) as connector:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            with pytest.raises(UpstreamUnavailable):
                await connector.request("tools/call", call("crash"))
            with anyio.fail_after(5):
                await watch_ended.wait()
        with pytest.raises(UpstreamUnavailable):
            await connector.request("tools/call", call("echo", text="anyone?"))


async def test_killed_child_fails_the_pending_call(stderr_log: StderrLog) -> None:
    async with running() as connector:
        pid = connector.pid
        assert pid is not None
        failure: list[BaseException] = []

        async def pending() -> None:
            try:
                await connector.request("tools/call", call("block", tag="K"))
            except UpstreamUnavailable as exc:
                failure.append(exc)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(pending)
                await stderr_log.wait_for("block K started")
                os.kill(pid, signal.SIGKILL)
        assert len(failure) == 1
        with pytest.raises(UpstreamUnavailable):
            await connector.watch(ignore)
    assert gone(pid)


async def test_aclose_stops_and_reaps_the_child() -> None:
    async with running() as connector:
        pid = connector.pid
    assert pid is not None and gone(pid)
    await connector.aclose()  # idempotent
    with pytest.raises(UpstreamUnavailable):
        await connector.request("tools/call", call("echo", text="hi"))
    with pytest.raises(UpstreamUnavailable):
        await connector.start()


async def test_aclose_escalates_to_sigkill_for_a_child_that_will_not_exit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="tollhouse.gateway.stdio"):
        async with running() as connector:
            pid = connector.pid
            assert await structured(connector, "stubborn") == "stubborn"
    assert pid is not None and gone(pid)
    assert "SIGTERM" in caplog.text and "SIGKILL" in caplog.text


async def test_command_that_does_not_exist_is_unavailable_at_start() -> None:
    connector = StdioUpstream(Upstream(name="kid", transport="stdio", command=("/nonexistent/mcp-server",)))
    with pytest.raises(UpstreamUnavailable):
        await connector.start()
    with pytest.raises(UpstreamUnavailable):
        await connector.request("tools/call", call("echo", text="hi"))
    await connector.aclose()


async def test_child_that_exits_at_once_is_unavailable_at_start() -> None:
    upstream = Upstream(name="kid", transport="stdio", command=(sys.executable, "-c", "pass"))
    connector = StdioUpstream(upstream)
    with pytest.raises(UpstreamUnavailable):
        await connector.start()
    await connector.aclose()


async def test_lines_on_stdout_that_are_not_json_rpc_are_logged_and_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A wrapper script that prints before handing stdout to the server.
    script = f'echo "starting up"; echo "[1, 2]"; exec "{sys.executable}" "{SERVER}"'
    upstream = Upstream(name="kid", transport="stdio", command=("/bin/sh", "-c", script))
    connector = StdioUpstream(upstream)
    with caplog.at_level(logging.WARNING, logger="tollhouse.gateway.jsonrpc_stream"):
        try:
            await connector.start()
            assert await structured(connector, "echo", text="fine") == "fine"
        finally:
            await connector.aclose()
    assert "not JSON (11 bytes)" in caplog.text
    assert "not JSON-RPC 2.0" in caplog.text
    assert "starting up" not in caplog.text  # the content itself is not logged


# -- stderr ------------------------------------------------------------------------------


async def test_stderr_lines_are_logged_with_the_server_name(
    caplog: pytest.LogCaptureFixture, stderr_log: StderrLog
) -> None:
    data = b"hello from the child\n" + b"\xff\xfe\x1b[31mred\n" + b"y" * 200 + b"\nlast line\n"
    with caplog.at_level(logging.INFO, logger=STDERR_LOGGER):
        async with running(max_log_line_bytes=64) as connector, anyio.create_task_group() as tg:
            await tg.start(connector.watch, ignore)
            await connector.request("tools/call", call("stderr", data_hex=data.hex()))
            await stderr_log.wait_for("last line")
            tg.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if r.name == STDERR_LOGGER]
    assert "kid: hello from the child" in lines
    assert "kid: \ufffd\ufffd\\x1b[31mred" in lines  # undecodable bytes replaced, escapes escaped
    assert f"kid: {'y' * 64} [truncated]" in lines
    assert "kid: last line" in lines


# -- watch -------------------------------------------------------------------------------


@pytest.mark.parametrize("era", ERAS)
async def test_watch_delivers_tools_list_changed_to_a_callback_that_lists_again(era: EraChoice) -> None:
    received: list[str] = []
    listed: list[str] = []
    changed = anyio.Event()

    async def on_notification(method: str, params: JSONObject) -> None:
        # As the pool does: the callback itself lists again over the same connection.
        received.append(method)
        listed.extend(tool["name"] for tool in await connector.list_all("tools/list", "tools"))
        changed.set()

    async with running(era=connector_era(era)) as connector, anyio.create_task_group() as tg:
        await tg.start(connector.watch, on_notification)
        assert await structured(connector, "add_tool") == "added_1"
        with anyio.fail_after(5):
            await changed.wait()
        tg.cancel_scope.cancel()
    assert received == ["notifications/tools/list_changed"]
    assert "added_1" in listed


async def test_watch_on_a_connector_that_never_started_is_unavailable() -> None:
    connector = StdioUpstream(stdio_upstream())
    with pytest.raises(UpstreamUnavailable):
        await connector.watch(ignore)


# -- list_all ----------------------------------------------------------------------------


async def test_list_all_follows_cursors_and_stops_on_a_repeated_one() -> None:
    pages = {None: (["a", "b"], "p2"), "p2": (["c"], "p3"), "p3": (["d"], None)}

    async def paged(method: str, params: JSONObject) -> JSONObject:
        names, cursor = pages[params.get("cursor")]
        result: JSONObject = {"tools": [{"name": n} for n in names]}
        if cursor is not None:
            result["nextCursor"] = cursor
        return result

    async def looping(method: str, params: JSONObject) -> JSONObject:
        return {"tools": [{"name": "again"}], "nextCursor": "same"}

    tools = await list_all("kid", paged, "tools/list", "tools")
    assert [tool["name"] for tool in tools] == ["a", "b", "c", "d"]
    with pytest.raises(UpstreamProtocolError):
        await list_all("kid", looping, "tools/list", "tools")
