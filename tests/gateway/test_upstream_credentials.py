"""Upstream credentials end to end: stored secrets, rotation, OAuth client credentials, token
exchange and per-user authorization code (SECURITY_GOALS K1-K4, S2: no passthrough)."""

from __future__ import annotations

import base64
import io
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import pytest
from mcp import MCPError
from pydantic import SecretStr

from tests.harness import ADMIN_TOKEN, Gateway, running_gateway
from tests.oauth_as import TOKEN_EXCHANGE, Guard, TestAuthServer, guarded_upstream
from tests.servers import serve
from tests.upstreams import HeaderRecorder, echo_upstream, legacy_only
from tollhouse.auth.ssrf import UrlPolicy
from tollhouse.gateway.cli import main
from tollhouse.gateway.errors import (
    UPSTREAM_AUTHORIZATION_REQUIRED,
    URL_ELICITATION_REQUIRED,
    UpstreamAuthorizationRequired,
)
from tollhouse.gateway.settings import UpstreamDefaults
from tollhouse.gateway.streamable_http import HttpUpstream
from tollhouse.gateway.upstream_credentials import ClientCredentials, OAuthClient, TokenExchangeCredentials
from tollhouse.registry.config import load_config
from tollhouse.registry.models import Upstream, UpstreamAuth

pytestmark = pytest.mark.anyio

SECRET = "up-s3cret-" + secrets.token_hex(8)
DEV = UpstreamDefaults(retry_min_seconds=0.05, retry_max_seconds=0.5, oauth_allow_loopback_http=True)


def echo_call() -> dict[str, Any]:
    return {"name": "echo", "arguments": {"text": "hi"}}


@asynccontextmanager
async def auth_server() -> AsyncIterator[TestAuthServer]:
    server = TestAuthServer(clients={"gw": "gw-secret", "public-gw": ""})
    async with serve(server.app()) as url:
        server.issuer = url
        yield server


@asynccontextmanager
async def guarded_echo(
    server: TestAuthServer, *, protect: frozenset[str] | None = None, legacy: bool = False
) -> AsyncIterator[tuple[str, Guard, HeaderRecorder]]:
    mcp, _ = echo_upstream()
    app = mcp.streamable_http_app()
    recorder = HeaderRecorder(legacy_only(app) if legacy else app)
    guarded, guard = guarded_upstream(recorder, server, protect=protect)
    async with serve(guarded, path="/mcp") as url:
        guard.resource = url
        yield url, guard, recorder


# -- static secrets stored encrypted ---------------------------------------------------------


async def test_a_stored_bearer_reaches_the_upstream_and_is_never_shown_or_exported(tmp_path: Path) -> None:
    mcp, _ = echo_upstream()
    recorder = HeaderRecorder(mcp.streamable_http_app())
    async with serve(recorder, path="/mcp") as url, running_gateway(tmp_path) as gw:
        created = await gw.add_server("echo", url, auth={"type": "bearer", "token": SECRET})
        key = await gw.create_client("agent")
        async with gw.client(key, "2026-07-28") as client:
            result = await client.call_tool("echo__echo", {"text": "hi"})
        assert not result.is_error
        shown = [
            created,
            (await gw.admin.get("/servers/echo")).json(),
            (await gw.admin.get("/servers")).json(),
        ]
        exported = (await gw.admin.get("/config/export")).text

    assert recorder.requests
    for request in recorder.requests:
        assert request.headers["authorization"] == f"Bearer {SECRET}"
        assert key not in repr(request.headers) and key.encode() not in request.body  # S2
    assert created["auth"] == {"type": "bearer", "token": {"set": True}}
    for body in shown:
        assert SECRET not in repr(body)
    assert SECRET not in exported and "${ECHO_TOKEN}" in exported


async def test_a_credential_without_its_secret_is_refused_and_names_no_value(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gw:
        missing = await gw.admin.post(
            "/servers",
            json={
                "name": "cc",
                "url": "http://127.0.0.1:9/mcp",
                "auth": {"type": "oauth_client_credentials", "client_id": "gw"},
            },
        )
        both = await gw.admin.post(
            "/servers",
            json={
                "name": "b",
                "url": "http://127.0.0.1:9/mcp",
                "auth": {"type": "bearer", "token": SECRET, "token_env": "X"},
            },
        )
    assert missing.status_code == 400 and "client_secret" in missing.json()["detail"]
    assert both.status_code == 400 and SECRET not in both.text


def test_a_file_gives_secrets_as_variables_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALC_TOKEN_VALUE", SECRET)
    text = "servers: [{name: calc, url: 'http://x/mcp', auth: {type: bearer, token: '${CALC_TOKEN_VALUE}'}}]"

    loaded = load_config(text)

    assert loaded.secrets == {"calc": {"token": SECRET}}
    assert loaded.servers[0].auth == UpstreamAuth(type="bearer")
    assert SECRET not in repr(loaded)
    with pytest.raises(Exception, match="MISSING_VAR is not set"):
        load_config(text.replace("CALC_TOKEN_VALUE", "MISSING_VAR"))


# -- rotation -------------------------------------------------------------------------------


def key_entry(kid: str) -> str:
    return f"{kid}:{base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip('=')}"


async def test_env_keys_rotate_by_reencryption_and_the_old_key_is_refused_while_in_use(
    tmp_path: Path,
) -> None:
    old, new = key_entry("k1"), key_entry("k2")
    mcp, _ = echo_upstream()
    recorder = HeaderRecorder(mcp.streamable_http_app())
    async with serve(recorder, path="/mcp") as url:
        async with running_gateway(tmp_path, secret_keys=SecretStr(old)) as gw:
            await gw.add_server("echo", url, auth={"type": "bearer", "token": SECRET})
        # The operator puts a new key in front and restarts every replica.
        async with running_gateway(tmp_path, secret_keys=SecretStr(f"{new},{old}")) as gw:
            listed = (await gw.admin.get("/keys")).json()
            refused = await gw.admin.delete("/keys/k1")
            rotated = (await gw.admin.post("/keys/rotate", json={})).json()
        # Only the new key is left; the credential still works.
        async with running_gateway(tmp_path, secret_keys=SecretStr(new)) as gw:
            key = await gw.create_client("agent")
            async with gw.client(key, "2026-07-28") as client:
                assert not (await client.call_tool("echo__echo", {"text": "hi"})).is_error

    assert listed["active"] == "k2" and listed["source"] == "env"
    assert {k["kid"]: k["rows"] for k in listed["keys"]} == {"k2": 0, "k1": 1}
    assert refused.status_code == 409 and "rotate" in refused.json()["detail"]
    assert rotated["reencrypted"] == 1
    assert {k["kid"]: k["rows"] for k in rotated["keys"]} == {"k2": 1, "k1": 0}
    assert recorder.requests[-1].headers["authorization"] == f"Bearer {SECRET}"


async def test_file_keys_rotate_with_a_new_key_and_the_old_one_can_then_be_removed(tmp_path: Path) -> None:
    mcp, _ = echo_upstream()
    recorder = HeaderRecorder(mcp.streamable_http_app())
    async with serve(recorder, path="/mcp") as url, running_gateway(tmp_path) as gw:
        await gw.add_server("echo", url, auth={"type": "header", "header": "X-Api-Key", "value": SECRET})
        before = (await gw.admin.get("/keys")).json()
        rotated = (await gw.admin.post("/keys/rotate")).json()
        removed = await gw.admin.delete(f"/keys/{before['active']}")
        refresh = await gw.admin.post("/servers/echo/refresh")  # reconnects with the re-sealed secret
        unknown = await gw.admin.delete("/keys/nope")
    assert unknown.status_code == 404

    assert before["source"] == "file" and len(before["keys"]) == 1
    assert rotated["active"] != before["active"] and rotated["reencrypted"] == 1
    assert {k["kid"]: k["rows"] for k in rotated["keys"]} == {rotated["active"]: 1, before["active"]: 0}
    assert removed.status_code == 200, removed.text
    assert [k["kid"] for k in removed.json()["keys"]] == [rotated["active"]]
    assert refresh.status_code == 200
    assert recorder.requests[-1].headers["x-api-key"] == SECRET


async def test_the_keys_api_needs_the_admin_token(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gw:
        async with httpx2.AsyncClient(base_url=f"{gw.base_url}/admin/api/v1", trust_env=False) as anonymous:
            assert (await anonymous.get("/keys")).status_code == 401
            assert (await anonymous.post("/keys/rotate")).status_code == 401
        assert (await gw.admin.get("/keys")).status_code == 200


# -- OAuth client credentials ----------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["modern", "legacy"])
async def test_client_credentials_token_is_discovered_sent_and_renewed(tmp_path: Path, legacy: bool) -> None:
    async with (
        auth_server() as issuer,
        guarded_echo(issuer, legacy=legacy) as (url, guard, recorder),
        running_gateway(tmp_path, upstreams=DEV) as gw,
    ):
        await gw.add_server(
            "echo",
            url,
            auth={"type": "oauth_client_credentials", "client_id": "gw", "client_secret": "gw-secret"},
        )
        key = await gw.create_client("agent")
        async with gw.client(key, "2026-07-28") as client:
            assert not (await client.call_tool("echo__echo", {"text": "a"})).is_error
            first_grants = len(issuer.grants)
            issuer.lifetime = 10  # from now on inside the renewal margin: each use gets a new token
            issuer.revoke_all()  # the upstream now answers 401 to the cached token
            assert not (await client.call_tool("echo__echo", {"text": "b"})).is_error
            after_401 = len(issuer.grants)
            assert not (await client.call_tool("echo__echo", {"text": "c"})).is_error
            assert not (await client.call_tool("echo__echo", {"text": "d"})).is_error

    assert set(guard.subjects("tools/call")) == {"client:gw"}
    assert after_401 == first_grants + 1
    assert len(issuer.grants) >= after_401 + 2
    assert set(issuer.grants) == {"client_credentials"}
    assert all(form["resource"] == url for form in issuer.forms)  # RFC 8707
    assert key not in repr([r.headers for r in recorder.requests])


async def test_metadata_urls_go_through_the_ssrf_guard() -> None:
    async with auth_server() as issuer, guarded_echo(issuer) as (url, _guard, _recorder):
        upstream = Upstream(
            name="echo", url=url, auth=UpstreamAuth(type="oauth_client_credentials", client_id="gw")
        )
        provider = ClientCredentials(upstream, OAuthClient(UrlPolicy()), None, {})
        connector = HttpUpstream(upstream, credentials=provider)
        try:
            with pytest.raises(Exception, match="Upstream unavailable"):
                await connector.start()
        finally:
            await connector.aclose()
    assert issuer.forms == []  # the loopback token endpoint learned from metadata was never called


# -- token exchange --------------------------------------------------------------------------


async def test_token_exchange_gets_each_principal_its_own_upstream_token() -> None:
    async with (
        auth_server() as issuer,
        guarded_echo(issuer, protect=frozenset({"tools/call"})) as (url, guard, _),
    ):
        issuer.subject_tokens = {"idp-alice": "alice", "idp-bob": "bob"}
        held = {
            "tollhouse|alice|c1": "idp-alice",
            "tollhouse|bob|c2": "idp-bob",
            "tollhouse|eve|c3": "forged",
        }

        async def subject_token_for(principal_key: str) -> str | None:
            return held.get(principal_key)

        upstream = Upstream(
            name="echo",
            url=url,
            auth=UpstreamAuth(
                type="token_exchange",
                client_id="gw",
                client_secret_env="S",
                audience="echo-api",
                scope="tools",
            ),
        )
        provider = TokenExchangeCredentials(
            upstream,
            OAuthClient(UrlPolicy(allow_loopback_http=True)),
            None,
            {"S": "gw-secret"},
            subject_token_for,
        )
        connector = HttpUpstream(upstream, credentials=provider)
        try:
            await connector.start()
            await connector.request("tools/call", echo_call(), principal_key="tollhouse|alice|c1")
            await connector.request("tools/call", echo_call(), principal_key="tollhouse|bob|c2")
            await connector.request("tools/call", echo_call(), principal_key="tollhouse|alice|c1")  # cached
            for nobody in ("tollhouse|eve|c3", "tollhouse|mallory|c4"):
                with pytest.raises(UpstreamAuthorizationRequired):
                    await connector.request("tools/call", echo_call(), principal_key=nobody)
        finally:
            await connector.aclose()

    assert guard.subjects("tools/call") == ["alice", "bob", "alice"]
    exchanges = [f for f in issuer.forms if f["grant_type"] == TOKEN_EXCHANGE]
    assert [f["subject_token"] for f in exchanges] == ["idp-alice", "idp-bob", "forged"]
    assert all(
        f["resource"] == url and f["audience"] == "echo-api" and f["scope"] == "tools" for f in exchanges
    )


# -- per-user authorization code -------------------------------------------------------------


async def connect(gw: Gateway, path: str, key: str) -> httpx2.Response:
    """Drive the connect flow as a browser would; the auth server approves at once."""
    async with httpx2.AsyncClient(trust_env=False, timeout=30) as browser:
        start = await browser.get(f"{gw.base_url}{path}", headers={"Authorization": f"Bearer {key}"})
        assert start.status_code == 302, start.text
        approved = await browser.get(start.headers["location"])
        assert approved.status_code == 302, approved.text
        # The callback URL is on the configured public URL; the test gateway serves elsewhere.
        back = urlsplit(approved.headers["location"])
        return await browser.get(f"{gw.base_url}{back.path}?{back.query}")


async def test_per_user_authorization_code_connect_flow(tmp_path: Path) -> None:
    async with (
        auth_server() as issuer,
        guarded_echo(issuer, protect=frozenset({"tools/call"})) as (url, guard, _),
        running_gateway(tmp_path, upstreams=DEV) as gw,
    ):
        await gw.add_server(
            "docs",
            url,
            auth={"type": "oauth_authorization_code", "client_id": "gw", "client_secret": "gw-secret"},
        )
        alice, bob = await gw.create_client("alice-agent"), await gw.create_client("bob-agent")
        async with gw.client(alice, "2026-07-28") as client:
            with pytest.raises(MCPError) as caught:
                await client.call_tool("docs__echo", {"text": "hi"})
        assert caught.value.code == UPSTREAM_AUTHORIZATION_REQUIRED
        connect_url = caught.value.data["connect_url"]
        path = urlsplit(connect_url).path
        assert path == "/oauth/upstreams/docs/connect"

        async with httpx2.AsyncClient(trust_env=False) as browser:
            anonymous = await browser.get(f"{gw.base_url}{path}")
        issuer.next_user = "alice@upstream"
        done = await connect(gw, path, alice)
        assert done.status_code == 200, done.text
        assert "frame-ancestors 'none'" in done.headers["content-security-policy"]

        async with gw.client(alice, "2026-07-28") as client:
            assert not (await client.call_tool("docs__echo", {"text": "hi"})).is_error
            issuer.lifetime = 10  # the next use refreshes (with a rotated refresh token)
            issuer.revoke_all()
            assert not (await client.call_tool("docs__echo", {"text": "again"})).is_error
            assert not (await client.call_tool("docs__echo", {"text": "third"})).is_error
        async with gw.client(bob, "2026-07-28") as client:
            with pytest.raises(MCPError) as bobs:
                await client.call_tool("docs__echo", {"text": "hi"})

        async def no_form(context: Any, params: Any) -> Any:
            raise AssertionError("the gateway asks for a URL, not a form")

        # A 2025-11-25 session client that supports URL elicitation gets MCP's own -32042.
        async with gw.client(bob, "legacy", elicitation_callback=no_form) as client:
            with pytest.raises(MCPError) as url_mode:
                await client.call_tool("docs__echo", {"text": "hi"})
        shown = (await gw.admin.get("/servers/docs")).text

    assert anonymous.status_code == 401
    assert bobs.value.code == UPSTREAM_AUTHORIZATION_REQUIRED
    assert url_mode.value.code == URL_ELICITATION_REQUIRED
    (elicitation,) = url_mode.value.data["elicitations"]
    assert elicitation["mode"] == "url" and urlsplit(elicitation["url"]).path == path
    assert elicitation["elicitationId"] and "docs" in elicitation["message"]
    assert guard.subjects("tools/call") == ["alice@upstream"] * 3
    assert issuer.grants[:1] == ["authorization_code"] and issuer.grants.count("refresh_token") >= 2
    assert "gw-secret" not in shown


async def test_a_replayed_or_foreign_callback_is_refused(tmp_path: Path) -> None:
    async with (
        auth_server() as issuer,
        guarded_echo(issuer, protect=frozenset({"tools/call"})) as (url, _guard, _),
        running_gateway(tmp_path, upstreams=DEV) as gw,
    ):
        await gw.add_server("docs", url, auth={"type": "oauth_authorization_code", "client_id": "public-gw"})
        alice = await gw.create_client("alice-agent")
        path = "/oauth/upstreams/docs/connect"
        async with (
            httpx2.AsyncClient(trust_env=False) as victim,
            httpx2.AsyncClient(trust_env=False) as attacker,
        ):
            start = await attacker.get(f"{gw.base_url}{path}", headers={"Authorization": f"Bearer {alice}"})
            approved = await attacker.get(start.headers["location"])
            back = urlsplit(approved.headers["location"])
            callback = f"{gw.base_url}{back.path}?{back.query}"
            foreign = await victim.get(callback)  # another browser: no binding cookie
            own = await attacker.get(callback)
            replay = await attacker.get(callback)
            unknown = await attacker.get(
                f"{gw.base_url}/oauth/upstreams/nope/connect",
                headers={"Authorization": f"Bearer {alice}"},
            )

    assert foreign.status_code == 400
    assert own.status_code == 400  # the state was spent by the foreign attempt: single use
    assert replay.status_code == 400
    assert unknown.status_code == 404
    assert "code_challenge" in start.headers["location"] and "S256" in start.headers["location"]


# -- the CLI ----------------------------------------------------------------------------------


async def test_cli_stores_a_secret_from_stdin_and_rotates_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mcp, _ = echo_upstream()
    recorder = HeaderRecorder(mcp.streamable_http_app())
    async with serve(recorder, path="/mcp") as url, running_gateway(tmp_path) as gw:
        connection = ["--url", gw.base_url, "--token", ADMIN_TOKEN]
        monkeypatch.setattr("sys.stdin", io.StringIO(SECRET + "\n"))
        added = await anyio.to_thread.run_sync(
            main, [*connection, "servers", "add", "echo", "--url", url, "--bearer-stdin", "--json"]
        )
        added_out = capsys.readouterr().out
        listed = await anyio.to_thread.run_sync(main, [*connection, "keys", "list", "--json"])
        before = json.loads(capsys.readouterr().out)
        rotated = await anyio.to_thread.run_sync(main, [*connection, "keys", "rotate", "--json"])
        after = json.loads(capsys.readouterr().out)
        removed = await anyio.to_thread.run_sync(main, [*connection, "keys", "remove", before["active"]])
        exported = await anyio.to_thread.run_sync(main, [*connection, "export"])
        export_out = capsys.readouterr().out

    assert (added, listed, rotated, removed, exported) == (0, 0, 0, 0, 0)
    assert json.loads(added_out)["auth"] == {"type": "bearer", "token": {"set": True}}
    assert before["keys"] == [{"kid": before["active"], "active": True, "rows": 1}]
    assert after["reencrypted"] == 1 and after["active"] != before["active"]
    assert SECRET not in added_out + export_out and "${ECHO_TOKEN}" in export_out
    assert recorder.requests[-1].headers["authorization"] == f"Bearer {SECRET}"
