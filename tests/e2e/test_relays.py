"""Server->client interactions relayed through the gateway, in every era combination it supports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import MCPError
from mcp.client.context import ClientRequestContext
from mcp.types import (
    CallToolResult,
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequestParams,
    ElicitResult,
    TextContent,
)

from tests.harness import Gateway, Mode, running_gateway
from tests.servers import serve
from tests.upstreams import Probe, echo_upstream, legacy_only
from tollhouse.gateway.errors import INVALID_PARAMS, METHOD_NOT_FOUND

pytestmark = pytest.mark.anyio

COMBINATIONS = [
    ("legacy", "legacy"),  # session downstream, session upstream: relayed request on the call's stream
    ("2026-07-28", "modern"),  # MRTR input_required passed through with a sealed requestState
    ("legacy", "modern"),  # the gateway answers input_required by asking the session downstream
    ("2026-07-28", "legacy"),  # the gateway holds the upstream call and answers input_required
]


@asynccontextmanager
async def echo_behind_gateway(tmp_path: Path, upstream_era: str) -> AsyncIterator[tuple[Gateway, Probe]]:
    """tests.upstreams.echo_upstream in the given era, registered as `up` on a fresh gateway."""
    server, probe = echo_upstream()
    app = server.streamable_http_app()
    async with (
        serve(legacy_only(app) if upstream_era == "legacy" else app, path="/mcp") as url,
        running_gateway(tmp_path) as gw,
    ):
        assert (await gw.add_server("up", url))["era"] == upstream_era
        yield gw, probe


def _text(result: CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, TextContent))


class Human:
    """The downstream's callbacks: records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def elicit(self, ctx: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
        self.asked.append(params.message)
        return ElicitResult(action="accept", content={"ok": True})

    async def sample(
        self, ctx: ClientRequestContext, params: CreateMessageRequestParams
    ) -> CreateMessageResult:
        first = params.messages[0].content
        self.asked.append(first.text if isinstance(first, TextContent) else "?")
        return CreateMessageResult(
            role="assistant", content=TextContent(type="text", text="short"), model="downstream-model"
        )


@pytest.mark.parametrize(("mode", "upstream_era"), COMBINATIONS)
async def test_elicitation_and_sampling_reach_the_downstream_and_the_answers_go_back(
    tmp_path: Path, mode: Mode, upstream_era: str
) -> None:
    async with echo_behind_gateway(tmp_path, upstream_era) as (gw, _):
        key = await gw.create_client("agent")
        human = Human()
        async with gw.client(
            key, mode, elicitation_callback=human.elicit, sampling_callback=human.sample
        ) as client:
            assert _text(await client.call_tool("up__confirm_delete", {"path": "/tmp/a"})) == "deleted /tmp/a"
            assert (
                _text(await client.call_tool("up__summarize", {"text": "long"})) == "downstream-model: short"
            )
        assert human.asked == ["Really delete /tmp/a?", "Summarize: long"]


async def test_a_session_downstream_without_the_capability_is_not_asked(tmp_path: Path) -> None:
    server, _ = echo_upstream()
    async with (
        serve(legacy_only(server.streamable_http_app()), path="/mcp") as url,
        running_gateway(tmp_path) as gw,
    ):
        await gw.add_server("up", url)
        key = await gw.create_client("agent")
        async with gw.client(key, "legacy") as client:  # declares no elicitation capability
            # The gateway refuses the upstream's elicitation itself; the upstream fails the call.
            with pytest.raises(MCPError) as caught:
                await client.call_tool("up__confirm_delete", {"path": "/tmp/a"})
            assert caught.value.code == METHOD_NOT_FOUND


async def _input_required(http: httpx2.AsyncClient, url: str, key: str) -> dict[str, Any]:
    response = await http.post(url, json=_call(None), headers=_headers(key))
    result: dict[str, Any] = response.json()["result"]
    assert result["resultType"] == "input_required"
    return result


def _call(state: Any, responses: dict[str, Any] | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {
        "name": "up__confirm_delete",
        "arguments": {"path": "/tmp/b"},
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}},
        },
    }
    if state is not None:
        params["requestState"] = state
        params["inputResponses"] = responses or {}
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}


def _headers(key: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {key}",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": "up__confirm_delete",
    }


@pytest.mark.parametrize("upstream_era", ["modern", "legacy"])  # legacy: a held call
async def test_a_sealed_request_state_works_only_unaltered_and_for_its_own_principal(
    tmp_path: Path, upstream_era: str
) -> None:
    async with echo_behind_gateway(tmp_path, upstream_era) as (gw, _):
        alice = await gw.create_client("alice")
        mallory = await gw.create_client("mallory")
        async with httpx2.AsyncClient(trust_env=False) as http:
            first = await _input_required(http, gw.mcp_url, alice)
            state = first["requestState"]
            assert state.startswith("th1.")
            (request_key,) = first["inputRequests"]
            answers = {request_key: {"action": "accept", "content": {"ok": True}}}

            forged = state[:-4] + ("AAAA" if not state.endswith("AAAA") else "BBBB")
            refused = [(alice, forged, answers), (mallory, state, answers), (alice, "v1.not-ours", answers)]
            if upstream_era == "legacy":  # a held call checks the answer itself
                refused.append((alice, state, {"wrong-key": answers[request_key]}))
            for key, token, given in refused:
                response = await http.post(gw.mcp_url, json=_call(token, given), headers=_headers(key))
                assert response.json()["error"]["code"] == INVALID_PARAMS

            response = await http.post(gw.mcp_url, json=_call(state, answers), headers=_headers(alice))
            assert response.json()["result"]["content"][0]["text"] == "deleted /tmp/b"


async def test_relayed_errors_from_the_downstream_reach_the_upstream_tool(tmp_path: Path) -> None:
    server, _ = echo_upstream()
    async with (
        serve(legacy_only(server.streamable_http_app()), path="/mcp") as url,
        running_gateway(tmp_path) as gw,
    ):
        await gw.add_server("up", url)
        key = await gw.create_client("agent")

        async def refuse(ctx: ClientRequestContext, params: ElicitRequestParams) -> Any:
            raise MCPError(-32000, "the user walked away")

        async with gw.client(key, "legacy", elicitation_callback=refuse) as client:
            with pytest.raises(MCPError) as caught:
                await client.call_tool("up__confirm_delete", {"path": "/tmp/c"})
            assert caught.value.code == -32000  # the downstream's own error, relayed both ways


async def test_log_messages_during_a_call_reach_a_session_at_or_above_its_level(tmp_path: Path) -> None:
    from mcp.shared.exceptions import MCPDeprecationWarning
    from mcp.types import LoggingMessageNotificationParams

    from examples.servers import everything

    async with serve(everything.build_app(), path="/mcp") as url, running_gateway(tmp_path) as gw:
        await gw.add_server("everything", url)
        key = await gw.create_client("agent")
        received: list[LoggingMessageNotificationParams] = []

        async def on_log(params: LoggingMessageNotificationParams) -> None:
            received.append(params)

        async with gw.client(key, "legacy", logging_callback=on_log) as client:
            with pytest.warns(MCPDeprecationWarning):  # logging is deprecated in 2026-07-28, still served
                await client.set_logging_level("debug")
            await client.call_tool("everything__test_tool_with_logging", {})
            assert len(received) >= 3
            received.clear()
            with pytest.warns(MCPDeprecationWarning):
                await client.set_logging_level("emergency")
            await client.call_tool("everything__test_tool_with_logging", {})
            assert received == []


@pytest.mark.parametrize("upstream_era", ["modern", "legacy"])
async def test_a_subscribed_session_hears_when_an_upstream_resource_changes(
    tmp_path: Path, upstream_era: str
) -> None:
    import anyio
    from mcp.shared.exceptions import MCPDeprecationWarning

    async with echo_behind_gateway(tmp_path, upstream_era) as (gw, probe):
        key = await gw.create_client("agent")
        updated: list[str] = []
        heard = anyio.Event()

        async def on_message(message: Any) -> None:
            root = getattr(message, "root", message)
            if getattr(root, "method", None) == "notifications/resources/updated":
                updated.append(str(root.params.uri))
                heard.set()

        async with gw.client(key, "legacy", message_handler=on_message) as client:
            assert client.server_capabilities.resources is not None
            assert client.server_capabilities.resources.subscribe is True
            with pytest.warns(MCPDeprecationWarning):  # session-era method, still served
                await client.subscribe_resource("tollhouse://up/note://watched")
            assert _text(await client.call_tool("up__touch", {"uri": "note://watched"})) == "touched"
            with anyio.fail_after(10):
                await heard.wait()
            assert updated == ["tollhouse://up/note://watched"]
            with pytest.warns(MCPDeprecationWarning):
                await client.unsubscribe_resource("tollhouse://up/note://watched")
        if upstream_era == "legacy":
            # The gateway's watch session subscribed upstream once, and let go on unsubscribe.
            assert probe.subscribed["note://watched"] == 0


async def test_a_2026_listener_with_resource_subscriptions_hears_resource_updates(tmp_path: Path) -> None:
    import anyio
    from mcp.shared.subscriptions import ResourceUpdated

    async with echo_behind_gateway(tmp_path, "modern") as (gw, _):
        key = await gw.create_client("agent")
        watched = "tollhouse://up/note://watched"
        async with (
            gw.client(key, "2026-07-28") as client,
            client.listen(resource_subscriptions=[watched, "tollhouse://nowhere/x://y"]) as subscription,
        ):
            assert subscription.honored.resource_subscriptions == [watched]  # the unroutable one is omitted
            assert _text(await client.call_tool("up__touch", {"uri": "note://watched"})) == "touched"
            with anyio.fail_after(10):
                event = await anext(aiter(subscription))
            assert isinstance(event, ResourceUpdated)
            assert event.uri == watched


async def test_progress_after_a_held_calls_question_reaches_the_clients_later_round(tmp_path: Path) -> None:
    server, _ = echo_upstream()
    async with (
        serve(legacy_only(server.streamable_http_app()), path="/mcp") as url,
        running_gateway(tmp_path) as gw,
    ):
        await gw.add_server("up", url)
        key = await gw.create_client("agent")
        human = Human()
        seen: list[float] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append(progress)

        async with gw.client(key, "2026-07-28", elicitation_callback=human.elicit) as client:
            result = await client.call_tool(
                "up__confirm_then_count", {"path": "/p"}, progress_callback=on_progress
            )
            assert _text(result) == "counted after yes for /p"
        assert human.asked == ["Really delete /p?"]
        assert seen == [1.0, 2.0]
