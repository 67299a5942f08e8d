"""`GET /admin/api/v1/stats`: the overview's figures from real calls, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from pydantic import SecretStr

from tests.databases import scratch_postgres
from tests.e2e.test_usage import FORBID_BLOCK, call
from tests.harness import Gateway, running_gateway
from tests.servers import serve
from tests.upstreams import echo_upstream
from tollhouse.audit.records import new_record
from tollhouse.auth.keyring import KeyRing, format_secret_key
from tollhouse.auth.tokens import TokenIssuer
from tollhouse.gateway.admin_stats import CALL_ACTIONS, DENIALS, ERRORS
from tollhouse.registry.audit_store import SqlAuditStore
from tollhouse.registry.migrate import create_engine_for, database_url_for, upgrade

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """None (the gateway's SQLite under tmp_path) or a scratch PostgreSQL database."""
    if request.param == "sqlite":
        yield None
        return
    with scratch_postgres(request.getfixturevalue("postgres_url")) as url:
        yield url


@dataclass
class Traffic:
    gw: Gateway
    key: str
    issuer: TokenIssuer

    def token(self, *roles: str) -> str:
        return self.issuer.mint(
            subject="someone",
            client_id="console",
            audience=self.gw.base_url,
            scope="mcp",
            kind="user",
            roles=roles,
        ).token

    async def stats(self, token: str | None = None, **params: Any) -> httpx2.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return await self.gw.admin.get("/stats", params=params, headers=headers)


@asynccontextmanager
async def traffic(tmp_path: Path, database_url: str | None) -> AsyncIterator[Traffic]:
    """A gateway in front of `calc` (block forbidden) after 3 ok calls, 1 tool error and 1 denial."""
    ring = KeyRing.generate()
    kid, secret = ring.masters[0]
    calc, _ = echo_upstream("calc")
    options: dict[str, Any] = {"secret_keys": SecretStr(format_secret_key(kid, secret))}
    if database_url is not None:
        options["database_url"] = database_url
    async with (
        serve(calc.streamable_http_app(), path="/mcp") as calc_url,
        running_gateway(tmp_path, **options) as gw,
    ):
        await gw.add_server("calc", calc_url)
        assert (await gw.admin.put("/policies/forbid-block", json={"cedar": FORBID_BLOCK})).status_code == 201
        key = await gw.create_client("bot", team="platform")
        assert await call(gw, key, "calc__echo", {"text": "hi"}, 3, vary=True) == ["ok"] * 3
        assert await call(gw, key, "calc__fail", {"message": "no"}) == ["tool_error"]
        [refused] = await call(gw, key, "calc__block", {})
        assert refused != "ok"
        yield Traffic(gw, key, TokenIssuer(gw.base_url, ring))


async def test_stats_count_real_calls_by_outcome_minute_and_tool(
    tmp_path: Path, database_url: str | None
) -> None:
    async with traffic(tmp_path, database_url) as t:
        response = await t.gw.admin.get("/stats")
        assert response.status_code == 200, response.text
        stats = response.json()
        assert stats["minutes"] == 60
        assert (stats["calls"], stats["errors"], stats["denials"]) == (5, 1, 1)
        assert stats["error_rate"] == pytest.approx(0.2) and stats["denial_rate"] == pytest.approx(0.2)
        assert stats["outcomes"] == {"ok": 3, "denied": 1, "tool_error": 1}

        series = stats["per_minute"]
        assert len(series) == 60
        minutes = [datetime.fromisoformat(p["minute"]) for p in series]
        assert minutes == sorted(minutes) and minutes[0] == datetime.fromisoformat(stats["since"])
        assert minutes[-1] + timedelta(minutes=1) == datetime.fromisoformat(stats["until"])
        assert minutes[-1] <= datetime.now(UTC) < minutes[-1] + timedelta(minutes=1)
        assert sum(p["calls"] for p in series) == 5
        assert sum(p["errors"] for p in series) == 1 and sum(p["denials"] for p in series) == 1
        # The calls took seconds: they fall in the last minute or two.
        assert all(p["calls"] == 0 for p in series[:-2])

        assert stats["top_tools"] == [
            {"name": "calc__echo", "server": "calc", "tool": "echo", "calls": 3, "errors": 0, "denials": 0},
            {"name": "calc__block", "server": "calc", "tool": "block", "calls": 1, "errors": 0, "denials": 1},
            {"name": "calc__fail", "server": "calc", "tool": "fail", "calls": 1, "errors": 1, "denials": 0},
        ]
        [calc] = stats["upstreams"]
        assert {k: calc[k] for k in ("name", "kind", "status", "breaker")} == {
            "name": "calc",
            "kind": "server",
            "status": "healthy",
            "breaker": "closed",
        }
        assert calc["tools"] > 3
        assert stats["pending_approvals"] == 0

        narrow = (await t.stats(minutes=5)).json()
        assert len(narrow["per_minute"]) == 5 and narrow["calls"] == 5


async def test_pending_approvals_and_a_down_upstream(tmp_path: Path) -> None:
    manual, _ = echo_upstream("manual")
    async with traffic(tmp_path, None) as t:
        async with serve(manual.streamable_http_app(), path="/mcp") as url:
            await t.gw.add_server("manual", url, approval="manual")
            waiting = (await t.gw.admin.get("/approvals")).json()["items"]
            assert waiting
            stats = (await t.gw.admin.get("/stats")).json()
            assert stats["pending_approvals"] == len(waiting)
        # Its server is gone: a refresh fails and takes it down (breaker open).
        assert (await t.gw.admin.post("/servers/manual/refresh")).status_code == 502
        stats = (await t.gw.admin.get("/stats")).json()
        manual_health = next(u for u in stats["upstreams"] if u["name"] == "manual")
        assert (manual_health["status"], manual_health["breaker"]) == ("down", "open")
        assert manual_health["last_error"]


async def test_every_console_role_reads_stats_and_clients_do_not(tmp_path: Path) -> None:
    async with traffic(tmp_path, None) as t:
        for role in ("viewer", "approver", "auditor", "admin"):
            response = await t.stats(t.token(role))
            assert response.status_code == 200, role
            assert response.json()["calls"] == 5
        assert (await t.stats(t.token())).status_code == 403
        assert (await t.stats(t.key)).status_code == 403
        async with httpx2.AsyncClient(base_url=f"{t.gw.base_url}/admin/api/v1", trust_env=False) as anonymous:
            assert (await anonymous.get("/stats")).status_code == 401
        for bad in ({"minutes": "0"}, {"minutes": "1441"}, {"minutes": "x"}, {"window": "60"}):
            response = await t.stats(**bad)
            assert response.status_code == 400, bad
            assert response.headers["content-type"] == "application/problem+json"


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield database_url_for(None, str(tmp_path / "data"))
        return
    with scratch_postgres(request.getfixturevalue("postgres_url")) as url:
        yield url


async def test_call_counts_bucket_by_utc_minute_within_the_window(store_url: str) -> None:
    upgrade(store_url)
    engine = create_engine_for(store_url)
    try:
        store = SqlAuditStore(engine)
        start = datetime(2027, 3, 1, 10, 0, tzinfo=UTC)

        def at(offset: float, outcome: str, tool: str = "echo", action: str = "tools/call") -> dict[str, Any]:
            kind = "a2a" if action.startswith("Send") else "mcp"
            server = "helper" if kind == "a2a" else "calc"
            return new_record(
                kind,
                action,
                who={"subject": "s"},
                what={"server": server, "tool": tool},
                outcome={"result": outcome},
                when=start + timedelta(seconds=offset),
            )

        await store.append(
            "n1",
            [
                at(-0.001, "ok"),  # before the window
                at(0, "ok"),
                at(59.999, "denied"),
                at(60, "tool_error"),
                at(61, "upstream_error", tool="fail"),
                at(125, "ok", tool="helper__ask", action="SendMessage"),
                at(299.999, "rate_limited"),
                at(300, "ok"),  # at the window's end: outside
                at(30, "ok", action="tools/list"),  # not a call
            ],
        )
        counts = await store.call_counts(
            start, start + timedelta(minutes=5), actions=CALL_ACTIONS, errors=ERRORS, denials=DENIALS
        )
        minute = [start + timedelta(minutes=i) for i in range(5)]
        assert sorted(counts.by_minute, key=lambda c: (c[0], c[1] or "")) == [
            (minute[0], "denied", 1),
            (minute[0], "ok", 1),
            (minute[1], "tool_error", 1),
            (minute[1], "upstream_error", 1),
            (minute[2], "ok", 1),
            (minute[4], "rate_limited", 1),
        ]
        assert counts.top_tools == [
            ("calc", "echo", 4, 1, 1),
            ("calc", "fail", 1, 1, 0),
            ("helper", "helper__ask", 1, 0, 0),
        ]
        top_one = await store.call_counts(
            start, start + timedelta(minutes=5), actions=CALL_ACTIONS, errors=ERRORS, denials=DENIALS, top=1
        )
        assert top_one.top_tools == [("calc", "echo", 4, 1, 1)]
    finally:
        engine.dispose()
