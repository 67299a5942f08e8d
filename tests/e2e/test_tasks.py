"""Tasks through the gateway: gateway task ids, bound to the principal that created them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.fakes import TaskUpstream
from tests.harness import running_gateway
from tests.servers import serve
from tollhouse.gateway.errors import INVALID_PARAMS

pytestmark = pytest.mark.anyio

ACCEPT = "application/json, text/event-stream"


class Session:
    """A raw session-era client session on the gateway."""

    def __init__(self, http: httpx2.AsyncClient, url: str, key: str) -> None:
        self.http, self.url, self.key = http, url, key
        self.headers: dict[str, str] = {}
        self.next_id = 0

    async def open(self) -> None:
        params = {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "0"},
        }
        response = await self.http.post(
            self.url, json=self._message("initialize", params), headers=self._auth()
        )
        caps = response.json()["result"]["capabilities"]
        assert caps["tasks"]["requests"] == {"tools": {"call": {}}}
        self.headers = {
            "Mcp-Session-Id": response.headers["mcp-session-id"],
            "MCP-Protocol-Version": "2025-11-25",
        }

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        response = await self.http.post(
            self.url, json=self._message(method, params), headers={**self._auth(), **self.headers}
        )
        answer: dict[str, Any] = response.json()
        return answer

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", "Accept": ACCEPT}

    def _message(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.next_id += 1
        return {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}


async def test_task_ids_are_the_gateways_own_and_only_their_owner_can_use_them(tmp_path: Path) -> None:
    upstream = TaskUpstream()
    async with serve(upstream, path="/mcp") as url, running_gateway(tmp_path) as gw:
        assert (await gw.add_server("jobs", url))["era"] == "legacy"
        alice_key, mallory_key = await gw.create_client("alice"), await gw.create_client("mallory")
        async with httpx2.AsyncClient(trust_env=False, timeout=30) as http:
            alice, mallory = Session(http, gw.mcp_url, alice_key), Session(http, gw.mcp_url, mallory_key)
            await alice.open()
            await mallory.open()

            created = await alice.call(
                "tools/call", {"name": "jobs__slow", "arguments": {}, "task": {"ttl": 60000}}
            )
            task_id = created["result"]["task"]["taskId"]
            assert task_id.startswith("task-")
            assert "up-1" in upstream.tasks  # the upstream's own id stays behind the gateway

            status = await alice.call("tasks/get", {"taskId": task_id})
            assert status["result"]["taskId"] == task_id
            assert status["result"]["status"] == "working"
            listed = await alice.call("tasks/list", {})
            assert [t["taskId"] for t in listed["result"]["tasks"]] == [task_id]

            for method in ("tasks/get", "tasks/result", "tasks/cancel"):
                stolen = await mallory.call(method, {"taskId": task_id})
                assert stolen["error"]["code"] == INVALID_PARAMS  # like an unknown id
            assert (await mallory.call("tasks/list", {}))["result"]["tasks"] == []
            assert (await alice.call("tasks/get", {"taskId": "up-1"}))["error"]["code"] == INVALID_PARAMS

            upstream.release.set()
            done = await alice.call("tasks/result", {"taskId": task_id})
            assert done["result"]["content"][0]["text"] == "done later"
            assert done["result"]["_meta"]["io.modelcontextprotocol/related-task"]["taskId"] == task_id

            plain = await alice.call("tools/call", {"name": "jobs__slow", "arguments": {}})
            assert plain["result"]["content"][0]["text"] == "done now"


async def test_2026_task_results_get_gateway_ids_bound_to_their_principal(tmp_path: Path) -> None:
    upstream = TaskUpstream(modern=True)
    async with serve(upstream, path="/mcp") as url, running_gateway(tmp_path) as gw:
        assert (await gw.add_server("jobs", url))["era"] == "modern"
        alice, mallory = await gw.create_client("alice"), await gw.create_client("mallory")
        caps: dict[str, Any] = {"extensions": {"io.modelcontextprotocol/tasks": {}}}

        async def call(http: httpx2.AsyncClient, key: str, method: str, params: dict[str, Any]) -> Any:
            meta = {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": caps,
            }
            headers = {
                "Authorization": f"Bearer {key}",
                "Accept": ACCEPT,
                "MCP-Protocol-Version": "2026-07-28",
                "Mcp-Method": method,
            }
            if method == "tools/call":
                headers["Mcp-Name"] = params["name"]
            body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": meta}}
            return (await http.post(gw.mcp_url, json=body, headers=headers)).json()

        async with httpx2.AsyncClient(trust_env=False, timeout=30) as http:
            created = await call(http, alice, "tools/call", {"name": "jobs__slow", "arguments": {}})
            assert created["result"]["resultType"] == "task"
            task_id = created["result"]["taskId"]
            assert task_id.startswith("task-")
            assert (await call(http, alice, "tasks/get", {"taskId": task_id}))["result"][
                "status"
            ] == "working"
            stolen = await call(http, mallory, "tasks/get", {"taskId": task_id})
            assert stolen["error"]["code"] == INVALID_PARAMS
            upstream.release.set()
            done = await call(http, alice, "tasks/get", {"taskId": task_id})
            assert done["result"]["taskId"] == task_id
            assert done["result"]["result"]["content"][0]["text"] == "done later"
