"""The example A2A agents, driven with the a2a-sdk client over real loopback HTTP.

Each agent's card carries absolute URLs, so `serve_agent` binds the port first, builds the
app for that base URL, then serves it on the bound socket.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from a2a.client import A2ACardResolver, Client, ClientConfig, ClientFactory
from a2a.helpers import get_artifact_text, get_data_parts, get_message_text, new_data_part
from a2a.types import (
    AgentCard,
    CancelTaskRequest,
    GetTaskRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    Task,
    TaskState,
)
from anyio.abc import Process
from mcp.server.mcpserver import Context, MCPServer
from starlette.types import ASGIApp

from examples.agents import echo_agent, notes_agent
from examples.servers import notes
from tests.harness import running_gateway
from tests.servers import loopback_socket, serve

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]
BINDINGS = ["JSONRPC", "HTTP+JSON"]
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@asynccontextmanager
async def serve_agent(build: Callable[[str], ASGIApp]) -> AsyncIterator[str]:
    """Serve the app `build(base_url)` makes on an ephemeral loopback port; yields the base URL."""
    sock = loopback_socket()
    async with serve(build(f"http://127.0.0.1:{sock.getsockname()[1]}"), sock=sock) as base_url:
        yield base_url


@asynccontextmanager
async def connect(
    base_url: str, binding: str = "JSONRPC", *, streaming: bool = False, headers: dict[str, str] | None = None
) -> AsyncIterator[tuple[AgentCard, Client]]:
    """The agent's card and an SDK client for it over `binding`."""
    async with httpx.AsyncClient(timeout=30, trust_env=False, headers=headers) as http:
        card = await A2ACardResolver(http, base_url).get_agent_card()
        config = ClientConfig(streaming=streaming, httpx_client=http, supported_protocol_bindings=[binding])
        client = ClientFactory(config).create(card)
        try:
            yield card, client
        finally:
            await client.close()


def request(text: str, skill: str | None = None, *, data: Any = None) -> SendMessageRequest:
    parts = [Part(text=text)] if text else []
    if data is not None:
        parts.append(new_data_part(data))
    message = Message(role=Role.ROLE_USER, message_id=str(uuid.uuid4()), parts=parts)
    if skill is not None:
        message.metadata.update({echo_agent.SKILL_KEY: skill})
    return SendMessageRequest(message=message)


async def send(client: Client, req: SendMessageRequest) -> Task:
    """Send in blocking mode; the one answer is the finished Task."""
    events = [event async for event in client.send_message(req)]
    assert len(events) == 1 and events[0].HasField("task"), events
    return events[0].task


def state(value: int) -> str:
    return str(TaskState.Name(value))


def kind(event: StreamResponse) -> str:
    payload = event.WhichOneof("payload")
    assert payload is not None
    return str(payload)


# --- echo agent -----------------------------------------------------------------------------


async def test_echo_card_declares_both_bindings_streaming_and_its_skills() -> None:
    async with (
        serve_agent(echo_agent.build_app) as base_url,
        connect(base_url) as (card, _),
        httpx.AsyncClient(trust_env=False) as http,
    ):
        raw = (await http.get(f"{base_url}/.well-known/agent-card.json")).json()

    assert card.name == "Echo Agent"
    assert [(i.protocol_binding, i.url, i.protocol_version) for i in card.supported_interfaces] == [
        ("JSONRPC", f"{base_url}/a2a/jsonrpc", "1.0"),
        ("HTTP+JSON", f"{base_url}/a2a/rest", "1.0"),
    ]
    assert card.capabilities.streaming and not card.capabilities.push_notifications
    assert [skill.id for skill in card.skills] == ["echo", "shout"]
    assert "protocolVersion" not in raw  # a 1.0 card carries no 0.3 fields


@pytest.mark.parametrize("binding", BINDINGS)
@pytest.mark.parametrize(
    ("skill", "expected"),
    [(None, "echo: hello there"), ("echo", "echo: hello there"), ("shout", "HELLO THERE")],
)
async def test_blocking_send_answers_with_the_chosen_skill(
    binding: str, skill: str | None, expected: str
) -> None:
    async with serve_agent(echo_agent.build_app) as base_url, connect(base_url, binding) as (_, client):
        task = await send(client, request("hello there", skill))
        fetched = await client.get_task(GetTaskRequest(id=task.id))

    assert state(task.status.state) == "TASK_STATE_COMPLETED"
    assert [get_artifact_text(artifact) for artifact in task.artifacts] == [expected]
    assert fetched.id == task.id
    assert state(fetched.status.state) == "TASK_STATE_COMPLETED"
    assert [get_artifact_text(artifact) for artifact in fetched.artifacts] == [expected]


@pytest.mark.parametrize("binding", BINDINGS)
async def test_streaming_send_reports_submitted_working_artifact_completed(binding: str) -> None:
    async with (
        serve_agent(echo_agent.build_app) as base_url,
        connect(base_url, binding, streaming=True) as (_, client),
    ):
        events = [event async for event in client.send_message(request("yo", "shout"))]

    assert [kind(event) for event in events] == ["task", "status_update", "artifact_update", "status_update"]
    assert state(events[0].task.status.state) == "TASK_STATE_SUBMITTED"
    assert state(events[1].status_update.status.state) == "TASK_STATE_WORKING"
    assert get_artifact_text(events[2].artifact_update.artifact) == "YO"
    assert state(events[3].status_update.status.state) == "TASK_STATE_COMPLETED"
    assert {events[1].status_update.task_id, events[3].status_update.task_id} == {events[0].task.id}


async def test_a_data_part_comes_back_as_data_in_the_artifact() -> None:
    document = {"order": "A-1", "items": ["milk", "bread"]}
    async with serve_agent(echo_agent.build_app) as base_url, connect(base_url) as (_, client):
        with_text = await send(client, request("see data", data=document))
        data_only = await send(client, request("", data=document))

    assert get_artifact_text(with_text.artifacts[0]) == "echo: see data"
    assert get_data_parts(with_text.artifacts[0].parts) == [document]
    assert get_data_parts(data_only.artifacts[0].parts) == [document]
    assert get_artifact_text(data_only.artifacts[0]) == ""


async def test_an_unknown_skill_is_rejected() -> None:
    async with serve_agent(echo_agent.build_app) as base_url, connect(base_url) as (_, client):
        task = await send(client, request("hi", "juggle"))

    assert state(task.status.state) == "TASK_STATE_REJECTED"
    assert "juggle" in get_message_text(task.status.message)
    assert not task.artifacts


async def test_a_waiting_task_fails_once_its_wait_is_over() -> None:
    build = lambda base_url: echo_agent.build_app(base_url, wait_timeout_seconds=0)  # noqa: E731
    async with serve_agent(build) as base_url, connect(base_url) as (_, client):
        task = await send(client, request("wait for nobody"))

    assert state(task.status.state) == "TASK_STATE_FAILED"
    assert "without a cancel" in get_message_text(task.status.message)


@dataclass
class Waiting:
    """A "wait" message streaming in the background."""

    task_id: str
    events: list[StreamResponse]
    finished: anyio.Event


async def _start_waiting_task(client: Client, tg: anyio.abc.TaskGroup) -> Waiting:
    """Stream a "wait" message in the background; returns once the task is WORKING."""
    working = anyio.Event()
    finished = anyio.Event()
    events: list[StreamResponse] = []

    async def stream() -> None:
        try:
            async for event in client.send_message(request("wait for it")):
                events.append(event)
                if (
                    event.HasField("status_update")
                    and event.status_update.status.state == TaskState.TASK_STATE_WORKING
                ):
                    working.set()
        finally:
            finished.set()

    tg.start_soon(stream)
    with anyio.fail_after(10):
        await working.wait()
    assert kind(events[0]) == "task"
    return Waiting(events[0].task.id, events, finished)


@pytest.mark.parametrize("binding", BINDINGS)
async def test_cancelling_a_waiting_task_cancels_it(binding: str) -> None:
    async with (
        serve_agent(echo_agent.build_app) as base_url,
        connect(base_url, binding, streaming=True) as (_, client),
        anyio.create_task_group() as tg,
    ):
        waiting = await _start_waiting_task(client, tg)
        cancelled = await client.cancel_task(CancelTaskRequest(id=waiting.task_id))
        with anyio.fail_after(10):
            await waiting.finished.wait()
        fetched = await client.get_task(GetTaskRequest(id=waiting.task_id))

    assert state(cancelled.status.state) == "TASK_STATE_CANCELED"
    assert state(fetched.status.state) == "TASK_STATE_CANCELED"
    assert kind(waiting.events[-1]) == "status_update"
    assert state(waiting.events[-1].status_update.status.state) == "TASK_STATE_CANCELED"


@pytest.mark.parametrize("binding", BINDINGS)
async def test_a_subscriber_to_a_waiting_task_sees_it_cancelled(binding: str) -> None:
    async with (
        serve_agent(echo_agent.build_app) as base_url,
        connect(base_url, binding, streaming=True) as (_, client),
        anyio.create_task_group() as tg,
    ):
        task_id = (await _start_waiting_task(client, tg)).task_id
        seen: list[StreamResponse] = []
        with anyio.fail_after(10):
            async for event in client.subscribe(SubscribeToTaskRequest(id=task_id)):
                seen.append(event)
                if len(seen) == 1:  # the snapshot: the subscription is live
                    cancelled = await client.cancel_task(CancelTaskRequest(id=task_id))

    assert kind(seen[0]) == "task"
    assert seen[0].task.id == task_id
    assert state(seen[0].task.status.state) == "TASK_STATE_WORKING"
    assert kind(seen[-1]) == "status_update"
    assert state(seen[-1].status_update.status.state) == "TASK_STATE_CANCELED"
    assert state(cancelled.status.state) == "TASK_STATE_CANCELED"


async def test_a_0_3_json_rpc_request_gets_a_0_3_answer() -> None:
    body = {
        "jsonrpc": "2.0",
        "id": 9,
        "method": "message/send",
        "params": {
            "message": {
                "kind": "message",
                "messageId": str(uuid.uuid4()),
                "role": "user",
                "parts": [{"kind": "text", "text": "old"}],
                "metadata": {echo_agent.SKILL_KEY: "shout"},
            }
        },
    }
    async with serve_agent(echo_agent.build_app) as base_url, httpx.AsyncClient(trust_env=False) as http:
        response = await http.post(f"{base_url}/a2a/jsonrpc", json=body)

    assert response.status_code == 200
    result = response.json()["result"]
    assert result["kind"] == "task"
    assert result["status"]["state"] == "completed"
    assert result["artifacts"][0]["parts"] == [{"kind": "text", "text": "OLD"}]


async def test_the_legacy_variant_serves_a_0_3_card() -> None:
    build = lambda base_url: echo_agent.build_app(base_url, legacy=True)  # noqa: E731
    async with serve_agent(build) as base_url, httpx.AsyncClient(trust_env=False) as http:
        card = (await http.get(f"{base_url}/.well-known/agent-card.json")).json()
        response = await http.post(
            card["url"],
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "message/send",
                "params": {
                    "message": {
                        "kind": "message",
                        "messageId": str(uuid.uuid4()),
                        "role": "user",
                        "parts": [{"kind": "text", "text": "legacy"}],
                    }
                },
            },
        )

    assert card["protocolVersion"] == "0.3"
    assert card["url"] == f"{base_url}/a2a/jsonrpc"
    assert card["preferredTransport"] == "JSONRPC"
    assert card["additionalInterfaces"] == [{"url": f"{base_url}/a2a/rest", "transport": "HTTP+JSON"}]
    assert response.json()["result"]["artifacts"][0]["parts"] == [{"kind": "text", "text": "echo: legacy"}]


# --- notes agent ----------------------------------------------------------------------------


def notes_of(task: Task) -> list[str]:
    """The notes a notes-agent task answered with (its artifact's data part)."""
    assert state(task.status.state) == "TASK_STATE_COMPLETED", get_message_text(task.status.message)
    (data,) = get_data_parts(task.artifacts[0].parts)
    assert isinstance(data, dict)
    listed = data["notes"]
    assert isinstance(listed, list)
    return listed


async def test_remember_keeps_a_note_in_the_notes_server_behind_the_gateway(tmp_path: Path) -> None:
    state_of_notes = notes.NotesState()
    async with (
        serve(notes.build_app(state_of_notes), path="/mcp") as notes_url,
        running_gateway(tmp_path) as gw,
    ):
        await gw.add_server("notes", notes_url)
        key = await gw.create_client("notes-agent")
        build = partial(notes_agent.build_app, mcp_url=gw.mcp_url, token=key)
        async with serve_agent(build) as base_url, connect(base_url) as (card, client):
            remembered = await send(client, request("buy milk", "remember"))
            also = await send(client, request("call Ada"))  # remember is the default skill
            recalled = await send(client, request("what was it?", "recall"))
        async with gw.client(key, "2026-07-28") as mcp:
            listed = await mcp.call_tool("notes__list_notes", {})

    assert [skill.id for skill in card.skills] == ["remember", "recall"]
    assert notes_of(remembered) == ["buy milk"]
    assert get_artifact_text(remembered.artifacts[0]) == "- buy milk"
    assert notes_of(also) == ["buy milk", "call Ada"]
    assert notes_of(recalled) == ["buy milk", "call Ada"]
    assert get_artifact_text(recalled.artifacts[0]) == "- buy milk\n- call Ada"
    assert listed.structured_content == {"result": ["buy milk", "call Ada"]}
    assert list(state_of_notes.notes.values()) == [["buy milk", "call Ada"]]


async def test_an_mcp_error_fails_the_task_and_the_agent_keeps_serving(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gw:  # no notes server registered: notes__* are unknown
        key = await gw.create_client("notes-agent")
        build = partial(notes_agent.build_app, mcp_url=gw.mcp_url, token=key)
        async with serve_agent(build) as base_url, connect(base_url) as (_, client):
            first = await send(client, request("buy milk", "remember"))
            second = await send(client, request("anything?", "recall"))

    assert state(first.status.state) == "TASK_STATE_FAILED"
    assert "notes__add_note" in get_message_text(first.status.message)
    assert not first.artifacts
    assert state(second.status.state) == "TASK_STATE_FAILED"
    assert "notes__list_notes" in get_message_text(second.status.message)


async def test_an_unreachable_gateway_fails_the_task() -> None:
    closed = loopback_socket()  # bound, never listening: connections are refused
    try:
        mcp_url = f"http://127.0.0.1:{closed.getsockname()[1]}/mcp"
        build = partial(notes_agent.build_app, mcp_url=mcp_url, token="t")
        async with serve_agent(build) as base_url, connect(base_url, "HTTP+JSON") as (_, client):
            task = await send(client, request("buy milk"))
    finally:
        closed.close()

    assert state(task.status.state) == "TASK_STATE_FAILED"
    assert "could not talk MCP" in get_message_text(task.status.message)


def recording_notes_server(seen: list[tuple[str | None, str | None]]) -> MCPServer:
    """An MCP server with tollhouse's names for the notes tools that records each call's traceparent."""
    server = MCPServer("recording-gateway")
    kept: list[str] = []

    def record(ctx: Context) -> None:
        headers = {name.lower(): value for name, value in (ctx.headers or {}).items()}
        in_meta = (ctx.request_context.meta or {}).get("traceparent")
        seen.append((headers.get("traceparent"), in_meta if isinstance(in_meta, str) else None))

    @server.tool(name="notes__add_note")
    def add_note(text: str, ctx: Context) -> str:
        record(ctx)
        kept.append(text)
        return f"added note {len(kept)}"

    @server.tool(name="notes__list_notes")
    def list_notes(ctx: Context) -> list[str]:
        record(ctx)
        return list(kept)

    return server


@pytest.mark.parametrize("binding", BINDINGS)
async def test_the_callers_traceparent_reaches_every_mcp_request(binding: str) -> None:
    seen: list[tuple[str | None, str | None]] = []
    app = recording_notes_server(seen).streamable_http_app(host="127.0.0.1")
    async with serve(app, path="/mcp") as mcp_url:
        build = partial(notes_agent.build_app, mcp_url=mcp_url, token="t")
        async with serve_agent(build) as base_url:
            async with connect(base_url, binding, headers={"traceparent": TRACEPARENT}) as (_, client):
                traced = await send(client, request("buy milk"))
            async with connect(base_url, binding) as (_, client):
                untraced = await send(client, request("anything?", "recall"))

    assert notes_of(traced) == ["buy milk"]
    assert notes_of(untraced) == ["buy milk"]
    assert seen == [(TRACEPARENT, TRACEPARENT), (TRACEPARENT, TRACEPARENT), (None, None)]


def test_the_notes_agent_cli_needs_a_gateway_and_a_token(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        notes_agent.main(["--token", "t"])

    assert "--mcp-url" in str(exited.value.code)


# --- the command lines ----------------------------------------------------------------------


async def _read_line(process: Process) -> str:
    assert process.stdout is not None
    buffered = b""
    while b"\n" not in buffered:
        buffered += await process.stdout.receive()
    return buffered.split(b"\n", 1)[0].decode()


@pytest.mark.parametrize(
    ("module", "options", "protocol"),
    [
        pytest.param("echo_agent", [], "1.0", id="echo"),
        pytest.param("echo_agent", ["--protocol", "0.3"], "0.3", id="echo-0.3"),
        pytest.param(
            "notes_agent", ["--mcp-url", "http://127.0.0.1:9/mcp", "--token", "t"], "1.0", id="notes"
        ),
    ],
)
async def test_agent_cli_prints_ready_serves_its_card_and_exits_cleanly_on_sigterm(
    module: str, options: list[str], protocol: str, tmp_path: Path
) -> None:
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("wb") as stderr:
        process = await anyio.open_process(
            [sys.executable, "-m", f"examples.agents.{module}", "--port", "0", *options],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=REPO,
        )
    try:
        with anyio.fail_after(30):
            line = await _read_line(process)
        ready = re.fullmatch(r"READY (http://127\.0\.0\.1:(\d+))/\.well-known/agent-card\.json", line)
        assert ready, f"{line!r}; stderr: {stderr_path.read_text()}"
        base_url = ready.group(1)
        async with httpx.AsyncClient(trust_env=False) as http:
            card = (await http.get(f"{base_url}/.well-known/agent-card.json")).json()
        assert card["supportedInterfaces"][0]["url"] == f"{base_url}/a2a/jsonrpc"
        assert card["supportedInterfaces"][0]["protocolVersion"] == protocol
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(15):
            returncode = await process.wait()
        assert returncode == 0, stderr_path.read_text()
    finally:
        if process.returncode is None:
            process.kill()
            with anyio.move_on_after(5, shield=True):
                await process.wait()
        await process.aclose()
