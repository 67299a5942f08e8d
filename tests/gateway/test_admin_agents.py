"""The admin API for A2A agents: /agents against real a2a-sdk agents, through a real gateway.

Agents are the example echo agent (examples/agents/echo_agent.py) or a card served from a
mutable holder, so a test changes the card and `POST /agents/{name}/refresh` (which returns
once the new card is live) shows what pinning made of it. No test waits on a timer.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from joserfc.jwk import ECKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from examples.agents.echo_agent import AGENT_CARD_PATH, SKILLS, agent_card, build_app
from tests.harness import Gateway, running_gateway
from tests.servers import loopback_socket, serve
from tests.upstreams import echo_upstream
from tollhouse.a2a.signing import sign_card
from tollhouse.registry.models import JSONObject

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def echo_agent() -> AsyncIterator[str]:
    """The example echo agent on an ephemeral port; yields its card URL."""
    sock = loopback_socket()
    async with serve(build_app(f"http://127.0.0.1:{sock.getsockname()[1]}"), sock=sock) as base:
        yield f"{base}{AGENT_CARD_PATH}"


def card_for(base_url: str, *, description: str = "Echoes what it is sent.") -> JSONObject:
    """An A2A 1.0 card (the echo agent's skills) whose interfaces are under `base_url`."""
    card = agent_card(base_url, name="Echo Agent", description=description, skills=SKILLS)
    document: JSONObject = agent_card_to_dict(card)
    return document


@dataclass
class CardHolder:
    """Serves whatever card it holds at the well-known path; tests replace `card` between fetches."""

    card: JSONObject
    base_url: str = ""

    @property
    def card_url(self) -> str:
        return f"{self.base_url}{AGENT_CARD_PATH}"


@asynccontextmanager
async def card_server(
    make: Any = card_for,
) -> AsyncIterator[CardHolder]:
    """A server of a mutable card; `make(base_url)` gives the first card (same origin as the card URL)."""
    sock = loopback_socket()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    holder = CardHolder(card=make(base), base_url=base)

    async def card(request: Request) -> Response:
        return JSONResponse(holder.card)

    app = Starlette(routes=[Route(AGENT_CARD_PATH, card, methods=["GET"])])
    async with serve(app, sock=sock):
        yield holder


async def add_agent(gw: Gateway, name: str, **body: Any) -> dict[str, Any]:
    response = await gw.admin.post("/agents", json={"name": name, **body})
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def problem(response: httpx2.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    detail: str = response.json()["detail"]
    return detail


async def tool_names(gw: Gateway) -> set[str]:
    return {t["name"] for t in (await gw.admin.get("/tools")).json()["items"]}


async def test_an_agent_added_by_card_url_lists_its_skills_and_exposes_them_as_tools(tmp_path: Path) -> None:
    async with echo_agent() as card_url, running_gateway(tmp_path) as gw:
        added = await add_agent(gw, "echo", card_url=card_url)
        assert added["status"] == "live" and added["last_error"] is None
        assert added["card_url"] == card_url and added["inline_card"] is False
        assert added["endpoint"] == f"{gw.base_url}/a2a/echo"
        assert added["card"]["name"] == "Echo Agent"
        assert added["card"]["version"] == "0.1.0"
        assert added["card"]["a2a_version"] == "1.0"
        assert [(s["id"], s["name"], s["tool"]) for s in added["skills"]] == [
            ("echo", "Echo", "echo__echo"),
            ("shout", "Shout", "echo__shout"),
        ]
        assert added["card_pin"]["status"] == "approved" and added["held"] is False

        # Its skills are MCP tools of the gateway, for the admin and for an MCP client.
        assert {"echo__echo", "echo__shout"} <= await tool_names(gw)
        key = await gw.create_client("caller")
        async with gw.client(key, "2026-07-28") as client:
            assert {"echo__echo", "echo__shout"} <= {t.name for t in (await client.list_tools()).tools}

        listed = (await gw.admin.get("/agents")).json()["items"]
        assert [a["name"] for a in listed] == ["echo"]
        assert listed[0]["endpoint"] == f"{gw.base_url}/a2a/echo"
        shown = (await gw.admin.get("/agents/echo")).json()
        assert shown["card_document"]["name"] == "Echo Agent"
        assert [s["id"] for s in shown["card_document"]["skills"]] == ["echo", "shout"]

        # The /servers routes know nothing of agents.
        assert (await gw.admin.get("/servers")).json()["items"] == []
        problem(await gw.admin.get("/servers/echo"), 404)
        problem(await gw.admin.delete("/servers/echo"), 404)
        problem(await gw.admin.post("/servers/echo/refresh"), 404)
        detail = problem(
            await gw.admin.post("/servers", json={"name": "other", "url": card_url, "transport": "a2a"}), 400
        )
        assert "/agents" in detail

        refreshed = await gw.admin.post("/agents/echo/refresh")
        assert refreshed.status_code == 200, refreshed.text
        assert refreshed.json()["status"] == "live"
        assert isinstance(refreshed.json()["snapshot_version"], int)

        assert (await gw.admin.delete("/agents/echo")).status_code == 204
        problem(await gw.admin.get("/agents/echo"), 404)
        assert (await gw.admin.get("/agents")).json()["items"] == []
        assert not {"echo__echo", "echo__shout"} & await tool_names(gw)

        # Admin actions on agents are audited like every other admin action.
        assert (await gw.admin.post("/audit/checkpoint")).status_code == 200
        records = (await gw.admin.get("/audit/records", params={"kind": "admin"})).json()["items"]
        actions = {r["action"] for r in records}
        assert {
            "POST /admin/api/v1/agents",
            "POST /admin/api/v1/agents/echo/refresh",
            "DELETE /admin/api/v1/agents/echo",
        } <= actions


async def test_an_inline_card_is_validated_up_front(tmp_path: Path) -> None:
    async with echo_agent() as card_url, running_gateway(tmp_path) as gw:
        base = card_url.removesuffix(AGENT_CARD_PATH)
        added = await add_agent(gw, "inline", card=card_for(base), tools="none")
        assert added["status"] == "live"
        assert added["card_url"] is None and added["inline_card"] is True
        assert [s["id"] for s in added["skills"]] == ["echo", "shout"]
        assert all(s["tool"] is None for s in added["skills"])  # tools: none
        assert not {"inline__echo", "inline__shout"} & await tool_names(gw)

        detail = problem(await gw.admin.post("/agents", json={"name": "bad", "card": {"name": "x"}}), 400)
        assert "agent 'bad'" in detail
        no_interface = {k: v for k, v in card_for(base).items() if k != "supportedInterfaces"}
        problem(await gw.admin.post("/agents", json={"name": "bad", "card": no_interface}), 400)
        problem(await gw.admin.post("/agents", json={"name": "bad", "card": "not an object"}), 400)
        both = {"name": "bad", "card": card_for(base), "card_url": card_url}
        assert "exactly one" in problem(await gw.admin.post("/agents", json=both), 400)
        assert "exactly one" in problem(await gw.admin.post("/agents", json={"name": "bad"}), 400)
        detail = problem(
            await gw.admin.post(
                "/agents", json={"name": "bad", "card_url": card_url, "require_signature": True}
            ),
            400,
        )
        assert "jwks" in detail
        detail = problem(await gw.admin.post("/agents", json={"name": "bad", "url": card_url}), 400)
        assert "url" in detail and "card_url" in detail
        problem(await gw.admin.post("/agents", json={"name": "Bad_Name", "card_url": card_url}), 400)
        problem(await gw.admin.post("/agents", json={"name": "tollhouse", "card_url": card_url}), 400)
        problem(
            await gw.admin.post("/agents", json={"name": "bad", "card_url": card_url, "tools": "all"}), 400
        )
        assert [a["name"] for a in (await gw.admin.get("/agents")).json()["items"]] == ["inline"]


async def test_servers_and_agents_share_one_name_space(tmp_path: Path) -> None:
    calc, _ = echo_upstream("calc")
    async with (
        echo_agent() as card_url,
        serve(calc.streamable_http_app(), path="/mcp") as calc_url,
        running_gateway(tmp_path) as gw,
    ):
        await gw.add_server("calc", calc_url)
        await add_agent(gw, "echo", card_url=card_url)
        assert "already exists" in problem(
            await gw.admin.post("/agents", json={"name": "calc", "card_url": card_url}), 409
        )
        assert "already exists" in problem(
            await gw.admin.post("/servers", json={"name": "echo", "url": calc_url}), 409
        )
        # Each kind of route sees only its own kind.
        problem(await gw.admin.get("/agents/calc"), 404)
        problem(await gw.admin.delete("/agents/calc"), 404)
        problem(await gw.admin.post("/agents/calc/refresh"), 404)
        problem(await gw.admin.get("/agents/calc/card/diff"), 404)
        assert [s["name"] for s in (await gw.admin.get("/servers")).json()["items"]] == ["calc"]
        assert [a["name"] for a in (await gw.admin.get("/agents")).json()["items"]] == ["echo"]
        # A config file cannot turn one into the other either.
        clash = {"servers": [{"name": "echo", "url": calc_url}]}
        assert "agent" in problem(await gw.admin.post("/config/apply", json={"config": clash}), 409)
        clash = {"agents": [{"name": "calc", "card_url": card_url}]}
        assert "server" in problem(await gw.admin.post("/config/apply", json={"config": clash}), 409)
        assert (await gw.admin.get("/servers/calc")).json()["transport"] == "http"


def signing_key(kid: str) -> tuple[JSONObject, JSONObject]:
    """(private JWK, JWKS with its public half)."""
    key = ECKey.generate_key("P-256", private=True)
    return key.as_dict(private=True), {"keys": [key.as_dict(private=False, kid=kid)]}


async def test_a_signed_card_is_accepted_only_with_a_key_that_verifies_it(tmp_path: Path) -> None:
    private, jwks = signing_key("card-key")
    _, other_jwks = signing_key("card-key")

    def signed(base: str) -> JSONObject:
        return sign_card(card_for(base), private, alg="ES256", kid="card-key")

    async with card_server(signed) as holder, running_gateway(tmp_path) as gw:
        good = await add_agent(gw, "signed", card_url=holder.card_url, require_signature=True, jwks=jwks)
        assert good["status"] == "live", good["last_error"]
        assert good["require_signature"] is True and good["jwks"] == jwks

        # Registration stands with the wrong keys, but the agent is down and says why.
        wrong = await add_agent(
            gw, "wrong", card_url=holder.card_url, require_signature=True, jwks=other_jwks
        )
        assert wrong["status"] == "down"
        assert "signature" in wrong["last_error"]
        assert wrong["skills"] == [] and wrong["card"] is None
        assert not {"wrong__echo", "wrong__shout"} & await tool_names(gw)
        detail = problem(await gw.admin.post("/agents/wrong/refresh"), 502)
        assert "signature" in detail

        # A card that loses its signature is refused at the next fetch.
        holder.card = card_for(holder.base_url)
        detail = problem(await gw.admin.post("/agents/signed/refresh"), 502)
        assert "no signatures" in detail
        down = (await gw.admin.get("/agents/signed")).json()
        assert down["status"] == "down" and "no signatures" in down["last_error"]

        # A private key is never accepted as verification material.
        detail = problem(
            await gw.admin.post(
                "/agents",
                json={"name": "leaky", "card_url": holder.card_url, "jwks": {"keys": [private]}},
            ),
            400,
        )
        assert "private" in detail and private["d"] not in detail


async def test_manual_approval_holds_the_agent_until_its_card_is_approved(tmp_path: Path) -> None:
    async with echo_agent() as card_url, running_gateway(tmp_path) as gw:
        added = await add_agent(gw, "echo", card_url=card_url, approval="manual")
        assert added["status"] == "live"
        assert added["held"] is True
        assert added["card_pin"]["status"] == "pending"
        assert all(s["tool"] is None for s in added["skills"])
        pending = (await gw.admin.get("/approvals")).json()["items"]
        assert ("card", "echo") in {(p["kind"], p["name"]) for p in pending}

        diff = (await gw.admin.get("/agents/echo/card/diff")).json()
        assert diff["status"] == "pending" and diff["held"] is True
        assert diff["old"] is None and diff["new"]["name"] == "Echo Agent"
        assert "(none approved)" in diff["diff"]
        assert '+  "name": "Echo Agent",' in diff["diff"].splitlines()

        approved = await gw.admin.post("/agents/echo/card/approve", json={"sha256": diff["sha256"]})
        assert approved.status_code == 200, approved.text
        assert approved.json()["status"] == "approved"
        assert approved.json()["decided_by"] == "admin-token"
        assert approved.json()["held"] is False
        shown = (await gw.admin.get("/agents/echo")).json()
        assert shown["held"] is False and shown["card_pin"]["status"] == "approved"
        # Under manual approval each skill's tool still needs its own approval.
        assert all(s["tool"] is None for s in shown["skills"])
        assert (await gw.admin.post("/tools/echo__echo/approve")).status_code == 200
        skills = {s["id"]: s["tool"] for s in (await gw.admin.get("/agents/echo")).json()["skills"]}
        assert skills == {"echo": "echo__echo", "shout": None}


async def test_a_changed_card_is_pending_with_a_readable_diff_until_approved(tmp_path: Path) -> None:
    async with card_server() as holder, running_gateway(tmp_path) as gw:
        added = await add_agent(gw, "echo", card_url=holder.card_url)
        assert added["status"] == "live" and added["held"] is False
        first_sha = added["card_pin"]["sha256"]
        assert "echo__echo" in await tool_names(gw)

        holder.card = card_for(holder.base_url, description="Now sends your text elsewhere.")
        refreshed = await gw.admin.post("/agents/echo/refresh")
        assert refreshed.status_code == 200, refreshed.text
        agent = refreshed.json()
        assert agent["status"] == "live"
        assert agent["held"] is True
        assert agent["card_pin"]["status"] == "changed"
        assert agent["card"]["description"] == "Now sends your text elsewhere."
        assert "echo__echo" not in await tool_names(gw)

        diff = (await gw.admin.get("/agents/echo/card/diff")).json()
        assert diff["approved_sha256"] == first_sha and diff["sha256"] != first_sha
        lines = diff["diff"].splitlines()
        assert '-  "description": "Echoes what it is sent.",' in lines
        assert '+  "description": "Now sends your text elsewhere.",' in lines
        assert diff["old"]["description"] == "Echoes what it is sent."

        # A decision about a card that is not the current one is refused.
        stale = await gw.admin.post("/agents/echo/card/approve", json={"sha256": first_sha})
        assert "changed since" in problem(stale, 409)

        rejected = await gw.admin.post("/agents/echo/card/reject")
        assert rejected.status_code == 200, rejected.text
        assert rejected.json()["status"] == "rejected" and rejected.json()["held"] is True
        assert "echo__echo" not in await tool_names(gw)

        approved = await gw.admin.post("/agents/echo/card/approve", json={"sha256": diff["sha256"]})
        assert approved.status_code == 200, approved.text
        assert approved.json()["held"] is False
        assert "echo__echo" in await tool_names(gw)
        shown = (await gw.admin.get("/agents/echo")).json()
        assert shown["held"] is False and shown["card_pin"]["status"] == "approved"

        # Going back to the first card is a change too: the approved card is now the second one.
        holder.card = copy.deepcopy(card_for(holder.base_url))
        again = (await gw.admin.post("/agents/echo/refresh")).json()
        assert again["card_pin"]["status"] == "changed" and again["held"] is True


async def test_an_unreachable_card_url_registers_the_agent_down(tmp_path: Path) -> None:
    sock = loopback_socket()
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there
    async with running_gateway(tmp_path) as gw:
        added = await add_agent(gw, "gone", card_url=f"http://127.0.0.1:{port}{AGENT_CARD_PATH}")
        assert added["status"] == "down"
        assert added["last_error"]
        assert added["card"] is None and added["card_pin"] is None
        assert "gone" in problem(await gw.admin.post("/agents/gone/refresh"), 502)
        problem(await gw.admin.get("/agents/gone/card/diff"), 404)
        assert [a["status"] for a in (await gw.admin.get("/agents")).json()["items"]] == ["down"]
        disabled = await add_agent(
            gw, "off", card_url=f"http://127.0.0.1:{port}{AGENT_CARD_PATH}", enabled=False
        )
        assert disabled["status"] == "disabled" and disabled["enabled"] is False


async def test_config_apply_and_export_round_trip_agents(tmp_path: Path) -> None:
    async with echo_agent() as card_url, card_server() as holder, running_gateway(tmp_path) as gw:
        inline = card_for(card_url.removesuffix(AGENT_CARD_PATH))
        _, jwks = signing_key("k1")
        config: dict[str, Any] = {
            "agents": [
                {"name": "echo", "card_url": card_url, "call_timeout_seconds": 30},
                {"name": "inline", "card": inline, "approval": "manual", "tools": "none"},
                {
                    "name": "locked",
                    "card_url": holder.card_url,
                    "require_signature": True,
                    "jwks": jwks,
                    "enabled": False,
                    "auth": {"type": "bearer", "token_env": "LOCKED_TOKEN"},
                },
            ]
        }
        first = await gw.admin.post("/config/apply", json={"config": config})
        assert first.status_code == 200, first.text
        assert sorted(first.json()["created"]) == ["agent/echo", "agent/inline", "agent/locked"]
        assert first.json()["warnings"] == []
        second = (await gw.admin.post("/config/apply", json={"config": config})).json()
        assert second["created"] == [] and second["updated"] == []
        assert sorted(second["unchanged"]) == ["agent/echo", "agent/inline", "agent/locked"]

        agents = {a["name"]: a for a in (await gw.admin.get("/agents")).json()["items"]}
        assert agents["echo"]["status"] == "live" and agents["echo"]["call_timeout_seconds"] == 30
        assert agents["inline"]["held"] is True
        assert agents["locked"]["status"] == "disabled"
        assert (await gw.admin.get("/servers")).json()["items"] == []

        exported = (await gw.admin.get("/config/export")).json()
        assert "servers" not in exported
        assert exported["agents"] == [
            {"name": "echo", "card_url": card_url, "call_timeout_seconds": 30},
            {"name": "inline", "card": inline, "approval": "manual", "tools": "none"},
            {
                "name": "locked",
                "card_url": holder.card_url,
                "enabled": False,
                "require_signature": True,
                "jwks": jwks,
                "auth": {"type": "bearer", "token_env": "LOCKED_TOKEN"},
            },
        ]

        # Applying the export changes nothing.
        again = (await gw.admin.post("/config/apply", json={"config": exported})).json()
        assert again["created"] == [] and again["updated"] == []

        # --prune prunes agents only when the file has an agents section.
        no_agents = {"teams": [{"name": "platform"}]}
        kept = (await gw.admin.post("/config/apply", json={"config": no_agents, "prune": True})).json()
        assert not [d for d in kept["deleted"] if d.startswith("agent/")]
        pruned = await gw.admin.post(
            "/config/apply", json={"config": {"agents": config["agents"][:1]}, "prune": True}
        )
        assert sorted(pruned.json()["deleted"]) == ["agent/inline", "agent/locked"]
        assert [a["name"] for a in (await gw.admin.get("/agents")).json()["items"]] == ["echo"]

        # An invalid inline card in a file changes nothing.
        bad = {"agents": [{"name": "bad", "card": {"name": "x"}}]}
        problem(await gw.admin.post("/config/apply", json={"config": bad}), 400)
        problem(
            await gw.admin.post(
                "/config/apply", json={"config": {"agents": [{"name": "x", "card_url": card_url, "urll": 1}]}}
            ),
            400,
        )
        assert [a["name"] for a in (await gw.admin.get("/agents")).json()["items"]] == ["echo"]


async def test_the_openapi_document_lists_the_agent_routes(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gw:
        paths = (await gw.admin.get("/openapi.json")).json()["paths"]
        assert set(paths["/agents"]) == {"get", "post"}
        assert {"get", "delete"} <= set(paths["/agents/{name}"])
        for path in ("refresh", "card/approve", "card/reject"):
            assert "post" in paths[f"/agents/{{name}}/{path}"]
        assert "get" in paths["/agents/{name}/card/diff"]
