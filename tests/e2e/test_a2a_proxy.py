"""The A2A proxy end to end: the a2a-sdk client through `/a2a/{agent}` to a real a2a-sdk agent.

Every binding and version the issue names (JSON-RPC and HTTP+JSON; 1.0 and 0.3), every
operation (card, blocking send, streaming send, get, cancel, resubscribe), and the
governance around them: ownership of tasks, authorization per agent, method and skill,
push-notification URL checks, limits, usage events and audit records.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from a2a.client import ClientConfig, ClientFactory
from a2a.client.client import Client
from a2a.helpers import get_artifact_text
from a2a.types import (
    AgentCard,
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    TaskState,
)
from a2a.utils.errors import TaskNotFoundError
from google.protobuf.json_format import ParseDict

from examples.agents.echo_agent import build_app
from tests.harness import Gateway, running_gateway
from tests.servers import loopback_socket, serve

pytestmark = pytest.mark.anyio

SKILL_KEY = "tollhouse/skill"


@dataclass
class Setup:
    gw: Gateway
    key: str
    agent_base: str


@asynccontextmanager
async def echo_agent(*, legacy: bool = False) -> AsyncIterator[str]:
    """The example echo agent on an ephemeral port (a 0.3 card with `legacy`); yields its base URL."""
    sock = loopback_socket()
    async with serve(
        build_app(f"http://127.0.0.1:{sock.getsockname()[1]}", legacy=legacy), sock=sock
    ) as base:
        yield base


async def add_agent(gw: Gateway, name: str, card_url: str, **extra: Any) -> dict[str, Any]:
    response = await gw.admin.post("/agents", json={"name": name, "card_url": card_url, **extra})
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


@asynccontextmanager
async def gateway_with_echo(
    tmp_path: Path, *, legacy: bool = False, **overrides: Any
) -> AsyncIterator[Setup]:
    async with echo_agent(legacy=legacy) as agent_base, running_gateway(tmp_path, **overrides) as gw:
        await add_agent(gw, "echo", f"{agent_base}/.well-known/agent-card.json")
        key = await gw.create_client("caller")
        yield Setup(gw, key, agent_base)


def message(text: str, skill: str | None = None, **fields: Any) -> SendMessageRequest:
    msg = Message(role=Role.ROLE_USER, message_id=str(uuid.uuid4()), parts=[Part(text=text)], **fields)
    if skill is not None:
        msg.metadata.update({SKILL_KEY: skill})
    return SendMessageRequest(message=msg)


@asynccontextmanager
async def sdk_client(
    gw: Gateway, key: str, *, binding: str = "JSONRPC", streaming: bool = False, agent: str = "echo"
) -> AsyncIterator[tuple[Client, AgentCard]]:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        response = await http.get(f"{gw.base_url}/a2a/{agent}/.well-known/agent-card.json")
        assert response.status_code == 200, response.text
        card = ParseDict(response.json(), AgentCard(), ignore_unknown_fields=True)
        config = ClientConfig(streaming=streaming, httpx_client=http, supported_protocol_bindings=[binding])
        client = ClientFactory(config).create(card)
        yield client, card


async def collect(stream: AsyncIterator[StreamResponse]) -> list[StreamResponse]:
    return [event async for event in stream]


@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON"])
async def test_sdk_client_through_the_gateway(tmp_path: Path, binding: str) -> None:
    async with gateway_with_echo(tmp_path) as s, sdk_client(s.gw, s.key, binding=binding) as (client, card):
        # The card points at tollhouse, not at the agent.
        assert {i.url for i in card.supported_interfaces} == {f"{s.gw.base_url}/a2a/echo"}
        assert s.agent_base not in str(card)
        # Blocking send.
        (event,) = await collect(client.send_message(message("hello", "echo")))
        task = event.task
        assert task.status.state == TaskState.TASK_STATE_COMPLETED
        assert [get_artifact_text(a) for a in task.artifacts] == ["echo: hello"]
        # Get task.
        got = await client.get_task(GetTaskRequest(id=task.id))
        assert got.id == task.id and got.status.state == TaskState.TASK_STATE_COMPLETED
        # Another skill.
        (event,) = await collect(client.send_message(message("hello", "shout")))
        assert [get_artifact_text(a) for a in event.task.artifacts] == ["HELLO"]

    async with (
        gateway_with_echo(tmp_path / "2") as s,
        sdk_client(s.gw, s.key, binding=binding, streaming=True) as (client, _),
    ):
        # Streaming send.
        events = await collect(client.send_message(message("stream me", "echo")))
        kinds = [e.WhichOneof("payload") for e in events]
        assert kinds[0] == "task" and "artifact_update" in kinds
        assert events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
        # A waiting task: resubscribe to it, cancel it, see it cancelled.
        first = await anext(aiter(client.send_message(message("wait for it", "echo"))))
        task_id = first.task.id
        async with anyio.create_task_group() as tg:
            seen: list[StreamResponse] = []
            subscribed = anyio.Event()

            async def follow() -> None:
                async for update in client.subscribe(SubscribeToTaskRequest(id=task_id)):
                    seen.append(update)
                    subscribed.set()

            tg.start_soon(follow)
            await subscribed.wait()  # the subscription is live (its first event is the task)
            cancelled = await client.cancel_task(CancelTaskRequest(id=task_id))
            assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
        assert seen, "the resubscribed stream saw the task"


async def test_another_principal_cannot_read_or_cancel_the_task(tmp_path: Path) -> None:
    async with gateway_with_echo(tmp_path) as s:
        other = await s.gw.create_client("intruder")
        async with sdk_client(s.gw, s.key) as (client, _), sdk_client(s.gw, other) as (intruder, _):
            (event,) = await collect(client.send_message(message("mine", "echo")))
            task_id = event.task.id
            with pytest.raises(TaskNotFoundError):
                await intruder.get_task(GetTaskRequest(id=task_id))
            with pytest.raises(TaskNotFoundError):
                await intruder.cancel_task(CancelTaskRequest(id=task_id))
            with pytest.raises(TaskNotFoundError):
                await collect(intruder.send_message(message("sneak", "echo", task_id=task_id)))
            # The owner still can, and task lists show each caller only their own tasks.
            assert (await client.get_task(GetTaskRequest(id=task_id))).id == task_id
            (theirs,) = await collect(intruder.send_message(message("theirs", "echo")))
            mine = [t.id for t in (await client.list_tasks(ListTasksRequest())).tasks]
            others = [t.id for t in (await intruder.list_tasks(ListTasksRequest())).tasks]
            assert task_id in mine and theirs.task.id not in mine
            assert others == [theirs.task.id]


@asynccontextmanager
async def client_03(gw: Gateway, key: str, *, binding: str = "JSONRPC") -> AsyncIterator[Client]:
    """The SDK client in 0.3 mode: only the card's 0.3 interfaces, so it picks its 0.3 transports."""
    async with sdk_client(gw, key, binding=binding) as (_, card):
        legacy = [i for i in card.supported_interfaces if i.protocol_version == "0.3"]
        assert legacy, "the served card offers 0.3 interfaces"
        del card.supported_interfaces[:]
        card.supported_interfaces.extend(legacy)
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            config = ClientConfig(streaming=True, httpx_client=http, supported_protocol_bindings=[binding])
            yield ClientFactory(config).create(card)


@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON"])
async def test_sdk_client_in_03_mode(tmp_path: Path, binding: str) -> None:
    # The card offers 0.3 interfaces when the agent's does (a 1.0-only agent's card stays pure 1.0).
    async with (
        gateway_with_echo(tmp_path, legacy=True) as s,
        client_03(s.gw, s.key, binding=binding) as client,
    ):
        events = await collect(client.send_message(message("old times", "shout")))
        assert events[0].WhichOneof("payload") == "task"
        task_id = events[0].task.id
        got = await client.get_task(GetTaskRequest(id=task_id))
        assert got.status.state == TaskState.TASK_STATE_COMPLETED
        assert [get_artifact_text(a) for a in got.artifacts] == ["OLD TIMES"]
        first = await anext(aiter(client.send_message(message("wait here", "echo"))))
        waiting = first.task.id
        async with anyio.create_task_group() as tg:
            seen: list[StreamResponse] = []
            subscribed = anyio.Event()

            async def follow() -> None:
                async for update in client.subscribe(SubscribeToTaskRequest(id=waiting)):
                    seen.append(update)
                    subscribed.set()

            tg.start_soon(follow)
            await subscribed.wait()
            cancelled = await client.cancel_task(CancelTaskRequest(id=waiting))
            assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
        assert seen


async def test_raw_03_jsonrpc_names_reach_a_10_agent(tmp_path: Path) -> None:
    async with gateway_with_echo(tmp_path) as s, httpx.AsyncClient(timeout=30) as http:
        response = await http.post(
            f"{s.gw.base_url}/a2a/echo",
            headers={"Authorization": f"Bearer {s.key}"},
            json={
                "jsonrpc": "2.0",
                "id": 7,
                "method": "message/send",
                "params": {
                    "message": {
                        "kind": "message",
                        "messageId": str(uuid.uuid4()),
                        "role": "user",
                        "parts": [{"kind": "text", "text": "legacy"}],
                        "metadata": {SKILL_KEY: "echo"},
                    }
                },
            },
        )
        body = response.json()
        assert body["id"] == 7 and body["result"]["kind"] == "task", body
        assert body["result"]["status"]["state"] == "completed"


async def test_a_03_agent_behind_the_gateway(tmp_path: Path) -> None:
    sock = loopback_socket()
    app = build_app(f"http://127.0.0.1:{sock.getsockname()[1]}", legacy=True)
    async with serve(app, sock=sock) as base, running_gateway(tmp_path) as gw:
        await add_agent(gw, "old", f"{base}/.well-known/agent-card.json")
        key = await gw.create_client("caller")
        for binding in ("JSONRPC", "HTTP+JSON"):
            async with sdk_client(gw, key, binding=binding, agent="old") as (client, card):
                assert card.supported_interfaces[0].protocol_version == "1.0"
                assert {i.protocol_version for i in card.supported_interfaces} == {"1.0", "0.3"}
                (event,) = await collect(client.send_message(message("bridged", "shout")))
                assert [get_artifact_text(a) for a in event.task.artifacts] == ["BRIDGED"]
                got = await client.get_task(GetTaskRequest(id=event.task.id))
                assert got.status.state == TaskState.TASK_STATE_COMPLETED


async def test_discovery_and_card_headers(tmp_path: Path) -> None:
    async with gateway_with_echo(tmp_path) as s, httpx.AsyncClient(timeout=30) as http:
        auth = {"Authorization": f"Bearer {s.key}"}
        listed = (await http.get(f"{s.gw.base_url}/a2a", headers=auth)).json()
        (entry,) = listed["agents"]
        assert entry["name"] == "echo" and entry["url"] == f"{s.gw.base_url}/a2a/echo"
        assert [skill["id"] for skill in entry["card"]["skills"]] == ["echo", "shout"]
        card_url = entry["card_url"]
        first = await http.get(card_url, headers=auth)
        assert first.status_code == 200 and first.headers["etag"].startswith('W/"')
        again = await http.get(card_url, headers={**auth, "If-None-Match": first.headers["etag"]})
        assert again.status_code == 304
        card = first.json()
        # A 1.0 agent's card is served as pure 1.0 (its interfaces all tollhouse's).
        assert [(i["protocolBinding"], i["protocolVersion"]) for i in card["supportedInterfaces"]] == [
            ("JSONRPC", "1.0"),
            ("HTTP+JSON", "1.0"),
        ]
        assert "url" not in card and "preferredTransport" not in card
        assert "tollhouse" in card["securitySchemes"]
        assert s.agent_base not in first.text
        # Unauthenticated: 401 with the resource metadata, never the card.
        refused = await http.get(card_url)
        assert refused.status_code == 401 and "resource_metadata" in refused.headers["www-authenticate"]
        unknown = await http.get(f"{s.gw.base_url}/a2a/nobody/.well-known/agent-card.json", headers=auth)
        assert unknown.status_code == 404
