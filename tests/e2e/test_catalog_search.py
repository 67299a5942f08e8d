"""Catalog search over the demo catalog (the example servers and agents `make demo` registers): natural
queries find the right tool in the top 3, and no surface ever returns what the caller may not see.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx2
import pytest

from examples.agents import echo_agent, notes_agent
from examples.servers import notes, studio
from tests.harness import ADMIN_TOKEN, Gateway, running_gateway
from tests.servers import loopback_socket, serve
from tollhouse.gateway.cli import main

pytestmark = pytest.mark.anyio

# (query, a tool or agent the top 3 must hold)
QUERIES = [
    ("add two numbers", "studio__add"),
    ("echo my text back", "studio__echo"),
    ("write a note", "notes__add_note"),
    ("list all my notes", "notes__list_notes"),
    ("delete every note", "notes__clear_notes"),
    ("count slowly and report progress", "studio__slow_count"),
    ("simulate a failing tool", "studio__fail"),
    ("which http request headers did the server get", "studio__headers"),
    ("w3c traceparent of the request", "notes__trace_context"),
    ("shout the text in upper case", "echo__shout"),
    ("remember this in my notes and answer with all of them", "notes-agent__remember"),
    ("wait until cancelled", "studio__wait_for_cancel"),
]


@asynccontextmanager
async def demo_catalog(tmp_path: Path) -> AsyncIterator[tuple[Gateway, str]]:
    """A gateway with the demo's servers and agents registered, and the demo team's client key."""
    async with AsyncExitStack() as stack:
        studio_url = await stack.enter_async_context(serve(studio.build_app(), path="/mcp"))
        notes_url = await stack.enter_async_context(serve(notes.build_app(), path="/mcp"))
        gw = await stack.enter_async_context(running_gateway(tmp_path, allow_all=False))
        await gw.add_server("studio", studio_url)
        await gw.add_server("notes", notes_url, description="Session notes", tags=["notes", "memo"])
        key = await gw.create_client("demo-agent", team="demo")
        grant = {"cedar": 'permit(principal in Team::"demo", action, resource);'}
        assert (await gw.admin.put("/policies/demo-team", json=grant)).status_code == 201
        sock = loopback_socket()
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        echo_base = await stack.enter_async_context(serve(echo_agent.build_app(base), sock=sock))
        sock = loopback_socket()
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        app = notes_agent.build_app(base, mcp_url=gw.mcp_url, token=key)
        notes_base = await stack.enter_async_context(serve(app, sock=sock))
        for name, agent_base in (("echo", echo_base), ("notes-agent", notes_base)):
            body = {"name": name, "card_url": f"{agent_base}/.well-known/agent-card.json"}
            assert (await gw.admin.post("/agents", json=body)).status_code == 201
        yield gw, key


async def search_as_caller(gw: Gateway, key: str, **params: Any) -> httpx2.Response:
    async with httpx2.AsyncClient(trust_env=False, timeout=30) as http:
        return await http.get(
            f"{gw.base_url}/catalog/v1/search", params=params, headers={"Authorization": f"Bearer {key}"}
        )


def names(response: httpx2.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [r["name"] for r in response.json()["results"]]


async def test_natural_queries_find_the_right_tool_in_the_top_three(tmp_path: Path) -> None:
    async with demo_catalog(tmp_path) as (gw, key):
        missed = []
        for query, expected in QUERIES:
            admin = (await gw.admin.get("/catalog/search", params={"q": query, "limit": 3})).json()
            caller = names(await search_as_caller(gw, key, q=query, limit=3))
            top = [r["name"] for r in admin["results"]]
            if expected not in top or expected not in caller:
                missed.append((query, expected, top, caller))
        assert not missed
        agents = names(await search_as_caller(gw, key, q="notes", kind="agent"))
        assert agents[0] == "notes-agent" and set(agents) <= {"notes-agent", "echo"}
        result = (await gw.admin.get("/catalog/search", params={"q": "add two numbers"})).json()["results"][0]
        assert result == {
            "kind": "tool",
            "name": "studio__add",
            "server": "studio",
            "title": None,
            "description": "Add two integers.",
            "score": result["score"],
        }


async def test_search_never_returns_what_the_caller_may_not_see(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with demo_catalog(tmp_path) as (gw, _):
        key = await gw.create_client("notes-only", team="notes-team")
        grant = {"allow": {"team": "notes-team", "tools": ["notes__*"]}}
        assert (await gw.admin.put("/policies/notes-team", json=grant)).status_code == 201
        for query, _ in QUERIES:
            seen = names(await search_as_caller(gw, key, q=query, limit=100))
            assert all(name.startswith("notes__") for name in seen), (query, seen)
            preview = (
                await gw.admin.get("/catalog/search", params={"q": query, "client": "notes-only"})
            ).json()
            assert all(r["name"].startswith("notes__") for r in preview["results"]), (query, preview)
        assert names(await search_as_caller(gw, key, q="shout", kind="agent")) == []

        argv = ["tools", "search", "add two numbers", "--url", gw.base_url, "--token", ADMIN_TOKEN]
        code = await anyio.to_thread.run_sync(main, [*argv, "--client", "notes-only", "--json"])
        out = capsys.readouterr().out
        assert code == 0 and "studio__add" not in out
        code = await anyio.to_thread.run_sync(main, argv)
        out = capsys.readouterr().out
        assert code == 0 and "studio__add" in out.splitlines()[1]  # the table's first row


async def test_bad_searches_get_clear_errors(tmp_path: Path) -> None:
    async with demo_catalog(tmp_path) as (gw, key):
        for params, message in (
            ({}, "non-empty"),
            ({"q": "  "}, "non-empty"),
            ({"q": "x" * 501}, "at most 500"),
            ({"q": "add", "limit": "0"}, "limit"),
            ({"q": "add", "limit": "many"}, "limit"),
            ({"q": "add", "kind": "prompt"}, "kind"),
            ({"q": "add", "sort": "name"}, "unknown parameter(s): sort"),
        ):
            caller = await search_as_caller(gw, key, **params)
            assert caller.status_code == 400 and message in caller.text, (params, caller.text)
            admin = await gw.admin.get("/catalog/search", params=params)
            assert admin.status_code == 400 and message in admin.text, (params, admin.text)
        assert (
            await gw.admin.get("/catalog/search", params={"q": "a", "client": "nobody"})
        ).status_code == 404
        async with httpx2.AsyncClient(trust_env=False) as http:
            anonymous = await http.get(f"{gw.base_url}/catalog/v1/search", params={"q": "add"})
        assert anonymous.status_code == 401 and "www-authenticate" in anonymous.headers
        assert names(await search_as_caller(gw, key, q="zzzqqq")) == []
