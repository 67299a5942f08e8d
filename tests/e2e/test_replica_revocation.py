"""Revocation reaches another replica within seconds; with the built-in server off, its tokens stop.

Two gateways share one PostgreSQL database and one key ring, as replicas do. A client revoked
through one replica is refused by the other (its API key, its client-credentials token) within
the 5 s DESIGN.md asks for; the test waits by retrying requests under a deadline.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from pydantic import SecretStr

from tests.databases import scratch_postgres
from tests.harness import initialize_request, running_gateway
from tests.servers import serve
from tests.upstreams import echo_upstream
from tollhouse.auth.keyring import KeyRing, format_secret_key
from tollhouse.auth.settings import AuthSettings
from tollhouse.auth.tokens import TokenIssuer

pytestmark = pytest.mark.anyio

INIT = initialize_request()
HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


async def status(http: httpx2.AsyncClient, url: str, token: str) -> int:
    response = await http.post(url, json=INIT, headers={**HEADERS, "Authorization": f"Bearer {token}"})
    return response.status_code


async def test_a_client_revoked_on_one_replica_is_refused_by_the_other_within_seconds(
    tmp_path: Path, postgres_url: str
) -> None:
    ring = KeyRing.generate()
    keys = SecretStr(format_secret_key(*ring.masters[0]))
    auth = AuthSettings(revocation_poll_seconds=0.5)
    with scratch_postgres(postgres_url) as database:
        shared: dict[str, Any] = {"database_url": database, "secret_keys": keys, "auth": auth}
        async with (
            running_gateway(tmp_path / "a", **shared) as a,
            running_gateway(tmp_path / "b", **shared) as b,
            httpx2.AsyncClient(trust_env=False, timeout=30) as http,
        ):
            created = (await a.admin.post("/clients", json={"name": "bot", "team": "platform"})).json()
            issued = await http.post(
                f"{a.base_url}/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=(created["client_id"], created["client_secret"]),
            )
            token = issued.json()["access_token"]
            # B learns of the new API key by its poll too; the token (signed with the shared ring,
            # audience a's public URL) is for replica a's URL, so b is asked with a token for b.
            b_token = TokenIssuer(b.base_url, ring).mint(
                subject=created["client_id"],
                client_id=created["client_id"],
                audience=b.mcp_url,
                scope="mcp",
                kind="client",
            )
            with anyio.fail_after(5):
                while await status(http, b.mcp_url, created["api_key"]) != 200:
                    pass
            assert await status(http, b.mcp_url, b_token.token) == 200
            assert await status(http, a.mcp_url, token) == 200

            assert (await a.admin.post(f"/clients/{created['client_id']}/revoke")).status_code == 200
            revoked_at = time.monotonic()
            assert await status(http, a.mcp_url, token) == 401  # at once where it was revoked
            with anyio.fail_after(5):
                while await status(http, b.mcp_url, b_token.token) != 401:
                    pass
                while await status(http, b.mcp_url, created["api_key"]) != 401:
                    pass
            assert time.monotonic() - revoked_at < 5


async def test_with_the_builtin_server_off_its_endpoints_and_tokens_are_gone(tmp_path: Path) -> None:
    ring = KeyRing.generate()
    server, _ = echo_upstream()
    async with (
        serve(server.streamable_http_app(), path="/mcp") as upstream,
        running_gateway(
            tmp_path,
            secret_keys=SecretStr(format_secret_key(*ring.masters[0])),
            auth=AuthSettings(builtin_server=False),
        ) as gw,
        httpx2.AsyncClient(trust_env=False, timeout=30) as http,
    ):
        await gw.add_server("up", upstream)
        for path in ("/oauth/token", "/oauth/authorize", "/.well-known/oauth-authorization-server"):
            assert (await http.get(gw.base_url + path)).status_code in (404, 405)
        metadata = (await http.get(f"{gw.base_url}/.well-known/oauth-protected-resource/mcp")).json()
        assert metadata["authorization_servers"] == []
        own = TokenIssuer(gw.base_url, ring).mint(
            subject="alice", client_id="app", audience=gw.mcp_url, scope="mcp", kind="user"
        )
        assert await status(http, gw.mcp_url, own.token) == 401
        key = await gw.create_client("bot")
        assert await status(http, gw.mcp_url, key) == 200
