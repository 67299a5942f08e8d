"""Governance of A2A traffic: policy per agent, method and skill; limits; push-URL checks; usage
and audit records with the task id; an agent reached as an MCP tool."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
from a2a.types import CancelTaskRequest, GetTaskRequest, TaskPushNotificationConfig, TaskState
from a2a.utils.errors import InvalidParamsError, PushNotificationNotSupportedError, TaskNotCancelableError
from mcp.types import TextContent

from tests.e2e.test_a2a_proxy import SKILL_KEY, add_agent, collect, echo_agent, message, sdk_client
from tests.harness import running_gateway
from tollhouse.registry.audit_store import SqlAuditStore
from tollhouse.registry.migrate import create_engine_for, database_url_for

pytestmark = pytest.mark.anyio


def rpc(method: str, params: dict[str, Any], request_id: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}


def send_params(text: str, skill: str | None) -> dict[str, Any]:
    msg: dict[str, Any] = {"messageId": str(uuid.uuid4()), "role": "ROLE_USER", "parts": [{"text": text}]}
    if skill:
        msg["metadata"] = {SKILL_KEY: skill}
    return {"message": msg}


V10 = {"A2A-Version": "1.0"}

POLICIES = {
    "echo-skill": 'permit(principal in Team::"platform", action == Action::"call_agent", '
    'resource == Skill::"echo/echo");',
    "echo-read": 'permit(principal in Team::"platform", action == Action::"call_agent", '
    'resource == Agent::"echo") when { context.method == "GetTask" };',
}


async def test_policy_per_agent_method_and_skill(tmp_path: Path) -> None:
    async with (
        echo_agent() as base,
        running_gateway(tmp_path, allow_all=False) as gw,
        httpx.AsyncClient(timeout=30) as http,
    ):
        await add_agent(gw, "echo", f"{base}/.well-known/agent-card.json")
        for policy_id, cedar in POLICIES.items():
            put = await gw.admin.put(f"/policies/{policy_id}", json={"cedar": cedar})
            assert put.status_code in (200, 201), put.text
        key = await gw.create_client("member", team="platform")
        outsider = await gw.create_client("outsider", team="finance")
        url = f"{gw.base_url}/a2a/echo"
        auth = {"Authorization": f"Bearer {key}", **V10}

        allowed = (
            await http.post(url, headers=auth, json=rpc("SendMessage", send_params("hi", "echo")))
        ).json()
        task_id = allowed["result"]["task"]["id"]
        for skill in ("shout", None, "no-such-skill"):
            denied = (
                await http.post(url, headers=auth, json=rpc("SendMessage", send_params("x", skill)))
            ).json()
            assert denied["error"]["code"] == -31011, (skill, denied)
        got = (await http.post(url, headers=auth, json=rpc("GetTask", {"id": task_id}))).json()
        assert got["result"]["id"] == task_id
        cancel = (await http.post(url, headers=auth, json=rpc("CancelTask", {"id": task_id}))).json()
        assert cancel["error"]["code"] == -31011
        (info,) = cancel["error"]["data"]
        assert info["reason"] == "AgentDenied" and info["metadata"]["method"] == "CancelTask"
        # HTTP+JSON answers a refusal with 403 and a google.rpc.Status body.
        rest = await http.post(f"{url}/tasks/{task_id}:cancel", headers=auth)
        assert rest.status_code == 403 and rest.json()["error"]["status"] == "PERMISSION_DENIED"
        # The card lists only the skills the caller may use.
        card = (await http.get(f"{url}/.well-known/agent-card.json", headers=auth)).json()
        assert [s["id"] for s in card["skills"]] == ["echo"]
        # Someone with no policy does not see the agent at all.
        other = {"Authorization": f"Bearer {outsider}", **V10}
        assert (await http.get(f"{url}/.well-known/agent-card.json", headers=other)).status_code == 404
        assert (await http.post(url, headers=other, json=rpc("GetTask", {"id": task_id}))).status_code == 404
        assert (await http.get(f"{gw.base_url}/a2a", headers=other)).json() == {"agents": []}


async def test_rate_limit_push_urls_usage_and_audit(tmp_path: Path) -> None:
    async with echo_agent() as base, running_gateway(tmp_path) as gw, httpx.AsyncClient(timeout=30) as http:
        await add_agent(gw, "echo", f"{base}/.well-known/agent-card.json")
        limit = await gw.admin.put("/limits/echo", json={"match": {"server": "echo"}, "rate": "4/minute"})
        assert limit.status_code in (200, 201), limit.text
        key = await gw.create_client("caller")
        url = f"{gw.base_url}/a2a/echo"
        auth = {"Authorization": f"Bearer {key}", **V10}
        sent = (
            await http.post(url, headers=auth, json=rpc("SendMessage", send_params("one", "echo")))
        ).json()
        task_id = sent["result"]["task"]["id"]
        got = (await http.post(url, headers=auth, json=rpc("GetTask", {"id": task_id}))).json()
        assert got["result"]["id"] == task_id
        # This agent has no push notifications: refused as the agent itself would (-32003).
        push = {"taskId": task_id, "url": "http://169.254.169.254/latest/meta-data"}
        refused = (
            await http.post(url, headers=auth, json=rpc("CreateTaskPushNotificationConfig", push))
        ).json()
        assert refused["error"]["code"] == -32003
        fourth = await http.post(url, headers=auth, json=rpc("GetTask", {"id": task_id}))
        assert fourth.status_code == 200
        limited = await http.post(url, headers=auth, json=rpc("GetTask", {"id": task_id}))
        assert limited.status_code == 429 and "retry-after" in limited.headers
        assert limited.json()["error"]["code"] == -31040

    engine = create_engine_for(database_url_for(None, str(tmp_path / "data")))
    records = [r async for r in SqlAuditStore(engine).records() if r["kind"] == "a2a"]
    actions = [(r["action"], r["outcome"]["result"]) for r in records]
    assert actions == [
        ("SendMessage", "ok"),
        ("GetTask", "ok"),
        ("CreateTaskPushNotificationConfig", "invalid"),
        ("GetTask", "ok"),
        ("GetTask", "rate_limited"),
    ]
    assert {r["correlation"].get("task_id") for r in records} == {task_id}
    assert records[0]["what"] == {
        "method": "SendMessage",
        "server": "echo",
        "tool": "echo__echo",
        "binding": "jsonrpc",
        "a2a_version": "1.0",
    }
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("select server, tool, method, outcome, event from usage_events")
        ).all()
    events = [r for r in rows if r.server == "echo"]
    assert [(r.method, r.outcome) for r in events] == [a for a in actions]
    for row in events:
        data = orjson.loads(row.event)["data"]
        assert data["protocol"] == "a2a" and data["task_id"] == task_id
    usage_ids = {r["correlation"]["usage_event"] for r in records}
    assert usage_ids == {orjson.loads(r.event)["id"] for r in events}


async def test_push_url_in_a_message_and_sdk_errors(tmp_path: Path) -> None:
    async with echo_agent() as base, running_gateway(tmp_path) as gw:
        await add_agent(gw, "echo", f"{base}/.well-known/agent-card.json")
        key = await gw.create_client("caller")
        async with sdk_client(gw, key) as (client, _):
            request = message("hi", "echo")
            request.configuration.task_push_notification_config.url = "http://127.0.0.1:1/hook"
            with pytest.raises(InvalidParamsError):
                await collect(client.send_message(request))
            (event,) = await collect(client.send_message(message("fine", "echo")))
            # This agent declares no push notifications: refused as the agent itself refuses.
            config = TaskPushNotificationConfig(task_id=event.task.id, url="https://example.com/hook")
            with pytest.raises(PushNotificationNotSupportedError):
                await client.create_task_push_notification_config(config)
            assert (await client.get_task(GetTaskRequest(id=event.task.id))).id == event.task.id
            # The agent's own error passes through as the A2A error it is.
            with pytest.raises(TaskNotCancelableError):
                await client.cancel_task(CancelTaskRequest(id=event.task.id))


async def test_an_agent_reached_as_an_mcp_tool(tmp_path: Path) -> None:
    async with echo_agent() as base, running_gateway(tmp_path) as gw:
        await add_agent(gw, "echo", f"{base}/.well-known/agent-card.json")
        key = await gw.create_client("caller")
        for mode in ("2026-07-28", "legacy"):
            async with gw.client(key, mode) as mcp:
                tools = {t.name: t for t in (await mcp.list_tools()).tools}
                assert {"echo__echo", "echo__shout"} <= set(tools)
                assert "text" in tools["echo__shout"].input_schema["properties"]
                result = await mcp.call_tool("echo__shout", {"text": "through mcp"})
                assert not result.is_error
                assert isinstance(result.content[0], TextContent)
                assert result.content[0].text == "THROUGH MCP"
                structured = result.structured_content or {}
                assert structured["state"] == TaskState.Name(TaskState.TASK_STATE_COMPLETED)
                # The task is the caller's: it can read it over A2A too.
                async with sdk_client(gw, key) as (client, _):
                    task = await client.get_task(GetTaskRequest(id=structured["taskId"]))
                    assert task.status.state == TaskState.TASK_STATE_COMPLETED
