"""The resource server: protected-resource metadata, challenges, the bad-token table, step-up, canary.

Tokens are minted with the gateway's own key ring (the test sets `secret_keys`), so each bad
token differs from a good one in exactly one way. Every refusal must happen before the
upstream sees anything: a HeaderRecorder in front of the echo upstream counts its calls.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
from joserfc import jwt
from pydantic import SecretStr

from tests.harness import Gateway, initialize_request, running_gateway
from tests.servers import serve
from tests.upstreams import HeaderRecorder, echo_upstream
from tollhouse.auth.keyring import KeyRing, format_secret_key
from tollhouse.auth.tokens import InvalidTokenError, TokenIssuer, signing_keyset
from tollhouse.gateway.front_door import build_front_door
from tollhouse.gateway.settings import Settings
from tollhouse.gateway.snapshot import expose_uri

pytestmark = pytest.mark.anyio

MODERN = "2026-07-28"
WATCHED = expose_uri("up", "note://watched")
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"},
}


def call_body(tool: str, arguments: dict[str, Any], request_id: int = 1) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": META},
    }


def call_headers(token: str | None, tool: str) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": tool,
    }
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@dataclass
class Setup:
    gw: Gateway
    http: httpx2.AsyncClient
    recorder: HeaderRecorder
    ring: KeyRing
    issuer: TokenIssuer
    client_id: str
    api_key: str
    tmp_path: Path

    def token(self, *, resource: str = "/mcp", scope: str = "mcp a2a", **claims: Any) -> str:
        """A good user token for `resource` (a path on the gateway), with claims overridden."""
        minted = self.issuer.mint(
            subject="alice",
            client_id=self.client_id,
            audience=self.gw.base_url + resource,
            scope=scope,
            kind="client",
        )
        if not claims:
            return minted.token
        return forge(self.ring, minted.token, claims)

    def calls(self) -> int:
        """tools/call requests the upstream has seen."""
        return sum(1 for m in self.recorder.rpc_methods() if m == "tools/call")


def forge(ring: KeyRing, token: str, claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """Re-sign `token`'s claims with changes, with the ring's real key (so only the change is wrong)."""
    decoded = jwt.decode(token, signing_keyset(ring))
    payload = {**decoded.claims, **claims}
    payload = {k: v for k, v in payload.items() if v is not None}
    key = signing_keyset(ring).keys[0]
    head = {**decoded.header, **(header or {})}
    return jwt.encode(head, payload, key, algorithms=["ES256"])


@asynccontextmanager
async def front_door(tmp_path: Path, **settings: Any) -> AsyncIterator[Setup]:
    ring = KeyRing.generate()
    kid, key = ring.masters[0]
    server, _ = echo_upstream()
    recorder = HeaderRecorder(server.streamable_http_app())
    async with (
        serve(recorder, path="/mcp") as url,
        running_gateway(tmp_path, secret_keys=SecretStr(format_secret_key(kid, key)), **settings) as gw,
        httpx2.AsyncClient(trust_env=False, timeout=30) as http,
    ):
        await gw.add_server("up", url, scopes={"add": ["calc:write"]})
        created = (await gw.admin.post("/clients", json={"name": "agent", "team": "platform"})).json()
        yield Setup(
            gw=gw,
            http=http,
            recorder=recorder,
            ring=ring,
            issuer=TokenIssuer(gw.base_url, ring),
            client_id=created["client_id"],
            api_key=created["api_key"],
            tmp_path=tmp_path,
        )


async def post_call(s: Setup, token: str | None, *, url: str | None = None, **extra: str) -> httpx2.Response:
    headers = {**call_headers(token, "up__echo"), **extra}
    return await s.http.post(url or s.gw.mcp_url, json=call_body("up__echo", {"text": "hi"}), headers=headers)


# --- protected-resource metadata and the 401 challenge ----------------------------------------


async def test_every_endpoint_has_protected_resource_metadata_and_the_401_points_at_it(
    tmp_path: Path,
) -> None:
    async with front_door(tmp_path) as s:
        base = s.gw.base_url
        await s.gw.admin.put("/toolsets/support", json={"tools": ["up__echo"]})
        for path in ("/mcp", "/mcp/support", "/servers/up/mcp"):
            response = await post_call(s, None, url=base + path)
            assert response.status_code == 401
            challenge = response.headers["www-authenticate"]
            metadata_url = f"{base}/.well-known/oauth-protected-resource{path}"
            assert f'resource_metadata="{metadata_url}"' in challenge
            assert 'scope="mcp"' in challenge
            document = (await s.http.get(metadata_url)).json()
            assert document["resource"] == base + path
            assert document["authorization_servers"] == [base]
            assert {"mcp", "a2a", "calc:write"} <= set(document["scopes_supported"])
            assert document["bearer_methods_supported"] == ["header"]
        root = (await s.http.get(f"{base}/.well-known/oauth-protected-resource")).json()
        assert root["resource"] == base
        for unknown in ("/servers/nope/mcp", "/mcp/nope"):
            assert (
                await s.http.get(f"{base}/.well-known/oauth-protected-resource{unknown}")
            ).status_code == 404
        assert s.calls() == 0


# --- the bad-token table ----------------------------------------------------------------------


def _alg_none(s: Setup) -> str:
    good = s.token()
    _, payload, _ = good.split(".")
    return f"{b64(orjson.dumps({'alg': 'none', 'typ': 'at+jwt'}))}.{payload}."


def _hs256_with_public_key(s: Setup) -> str:
    good = s.token()
    _, payload, _ = good.split(".")
    public = orjson.dumps(s.issuer.jwks()["keys"][0])
    header = b64(orjson.dumps({"alg": "HS256", "typ": "at+jwt", "kid": s.ring.active_kid}))
    signature = hmac.new(public, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


def _bad_signature(s: Setup) -> str:
    header, payload, signature = s.token().split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[5] ^= 0xFF
    return f"{header}.{payload}.{b64(bytes(raw))}"


def _tampered_payload(s: Setup) -> str:
    header, payload, signature = s.token().split(".")
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "mallory"
    return f"{header}.{b64(orjson.dumps(claims))}.{signature}"


def _foreign_key(s: Setup) -> str:
    other = TokenIssuer(s.gw.base_url, KeyRing.generate())
    return other.mint(
        subject="alice", client_id=s.client_id, audience=s.gw.mcp_url, scope="mcp", kind="client"
    ).token


def _wrong_issuer(s: Setup) -> str:
    return s.token(iss="https://evil.example")


def _id_token_type(s: Setup) -> str:
    return forge(s.ring, s.token(), {}, {"typ": "JWT"})


BAD_TOKENS: dict[str, Callable[[Setup], str]] = {
    "audience of another upstream's endpoint": lambda s: s.token(resource="/servers/other/mcp"),
    "audience of a toolset endpoint": lambda s: s.token(resource="/mcp/support"),
    "audience of a foreign resource": lambda s: s.token(aud="https://elsewhere.example/mcp"),
    "wrong issuer (signed with our key)": _wrong_issuer,
    "expired": lambda s: s.token(exp=int(time.time()) - 120, iat=int(time.time()) - 1000),
    "not yet valid (nbf in the future)": lambda s: s.token(nbf=int(time.time()) + 600),
    "alg none": _alg_none,
    "HS256 keyed with the public key": _hs256_with_public_key,
    "bad signature": _bad_signature,
    "tampered payload": _tampered_payload,
    "signed by another key": _foreign_key,
    "not an access token (typ JWT)": _id_token_type,
    "no exp": lambda s: s.token(exp=None),
    "malformed": lambda s: "not.a.jwt",
    "garbage": lambda s: secrets.token_urlsafe(40),
    "unknown API key": lambda s: "thk_" + secrets.token_urlsafe(32),
    "empty segments": lambda s: "..",
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
async def test_a_bad_token_gets_401_and_the_upstream_sees_nothing(tmp_path: Path, case: str) -> None:
    async with front_door(tmp_path) as s:
        token = BAD_TOKENS[case](s)
        response = await post_call(s, token)
        assert response.status_code == 401, response.text
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith("Bearer ")
        assert 'error="invalid_token"' in challenge
        assert "resource_metadata=" in challenge
        assert s.calls() == 0
        failures = (await s.gw.admin.get("/auth/failures")).json()
        assert failures["items"][0]["status"] == 401
        # The record names the token by a fingerprint, never the token itself.
        assert token not in orjson.dumps(failures).decode() or token in ("..",)
        # The control: the same request with a good token goes through.
        assert (await post_call(s, s.token())).status_code == 200
        assert s.calls() == 1


async def test_transport_refusals_token_in_query_string_wrong_scheme_and_revocation(tmp_path: Path) -> None:
    async with front_door(tmp_path) as s:
        good = s.token()
        in_query = await post_call(s, None, url=f"{s.gw.mcp_url}?access_token={good}")
        assert in_query.status_code == 401
        assert 'error="invalid_request"' in in_query.headers["www-authenticate"]
        # Even alongside a good header, a token in the query string is refused (it leaks to logs).
        both = await post_call(s, good, url=f"{s.gw.mcp_url}?access_token={good}")
        assert both.status_code == 401
        basic = await post_call(s, None, Authorization="Basic " + b64(b"alice:secret"))
        assert basic.status_code == 401
        # A token of a revoked client stops working at once.
        assert (await post_call(s, good)).status_code == 200
        assert (await s.gw.admin.post(f"/clients/{s.client_id}/revoke")).status_code == 200
        revoked = await post_call(s, good)
        assert revoked.status_code == 401
        assert (await post_call(s, s.api_key)).status_code == 401
        assert s.calls() == 1


async def test_a_token_for_the_gateway_itself_is_accepted_on_every_endpoint(tmp_path: Path) -> None:
    async with front_door(tmp_path) as s:
        await s.gw.admin.put("/toolsets/support", json={"tools": ["up__echo"]})
        token = s.token(resource="")
        for path in ("/mcp", "/mcp/support", "/servers/up/mcp"):
            tool = "echo" if path.startswith("/servers") else "up__echo"
            response = await s.http.post(
                s.gw.base_url + path, json=call_body(tool, {"text": "x"}), headers=call_headers(token, tool)
            )
            assert response.status_code == 200, (path, response.text)
        # A token for /mcp is not one for /servers/up/mcp.
        narrow = s.token(resource="/mcp")
        response = await s.http.post(
            s.gw.base_url + "/servers/up/mcp",
            json=call_body("echo", {"text": "x"}),
            headers=call_headers(narrow, "echo"),
        )
        assert response.status_code == 401


async def test_a_token_without_the_mcp_scope_gets_403_insufficient_scope(tmp_path: Path) -> None:
    async with front_door(tmp_path) as s:
        response = await post_call(s, s.token(scope="a2a"))
        assert response.status_code == 403
        challenge = response.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in challenge
        assert 'scope="mcp"' in challenge
        assert s.calls() == 0


# --- step-up ----------------------------------------------------------------------------------


async def test_step_up_names_only_the_missing_scope_and_the_call_succeeds_with_it(tmp_path: Path) -> None:
    async with front_door(tmp_path) as s:
        for mode_headers in (call_headers, None):
            token = s.token(scope="mcp")
            if mode_headers is not None:
                response = await s.http.post(
                    s.gw.mcp_url,
                    json=call_body("up__add", {"a": 1, "b": 2}),
                    headers=call_headers(token, "up__add"),
                )
            else:
                response = await _legacy_call(s, token, "up__add", {"a": 1, "b": 2})
            assert response.status_code == 403, response.text
            challenge = response.headers["www-authenticate"]
            assert 'error="insufficient_scope"' in challenge
            assert 'scope="calc:write"' in challenge
            assert (
                f'resource_metadata="{s.gw.base_url}/.well-known/oauth-protected-resource/mcp"' in challenge
            )
            error = response.json()["error"]
            assert error["data"] == {"required_scopes": ["calc:write"]}
        assert s.calls() == 0
        # Tools that need no extra scope work with the base token; with the scope, add works too.
        assert (await post_call(s, s.token(scope="mcp"))).status_code == 200
        stepped = s.token(scope="mcp calc:write")
        response = await s.http.post(
            s.gw.mcp_url,
            json=call_body("up__add", {"a": 1, "b": 2}),
            headers=call_headers(stepped, "up__add"),
        )
        assert response.status_code == 200
        assert response.json()["result"]["content"][0]["text"] == "3"
        # API keys carry the scopes their client was granted.
        scoped = (
            await s.gw.admin.post(
                "/clients", json={"name": "writer", "team": "platform", "scopes": ["calc:write"]}
            )
        ).json()["api_key"]
        response = await s.http.post(
            s.gw.mcp_url, json=call_body("up__add", {"a": 2, "b": 2}), headers=call_headers(scoped, "up__add")
        )
        assert response.status_code == 200
        response = await s.http.post(
            s.gw.mcp_url,
            json=call_body("up__add", {"a": 2, "b": 2}),
            headers=call_headers(s.api_key, "up__add"),
        )
        assert response.status_code == 403


async def _legacy_call(s: Setup, token: str, tool: str, arguments: dict[str, Any]) -> httpx2.Response:
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
    }
    init = initialize_request()
    response = await s.http.post(s.gw.mcp_url, json=init, headers=headers)
    assert response.status_code == 200, response.text
    session = response.headers["mcp-session-id"]
    headers = {**headers, "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"}
    await s.http.post(
        s.gw.mcp_url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers
    )
    body = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }
    return await s.http.post(s.gw.mcp_url, json=body, headers=headers)


# --- the canary: the agent's token never travels further --------------------------------------


async def test_canary_the_agents_token_reaches_no_upstream_log_or_stored_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with front_door(tmp_path) as s:
        token = s.token(scope="mcp calc:write")
        signature = token.rsplit(".", 1)[1]
        canaries = [token, signature, s.api_key]
        calls = 0
        for i in range(1000):
            bearer = token if (i // 4) % 2 == 0 else s.api_key
            kind = i % 4
            if kind == 0:
                body, tool = call_body("up__echo", {"text": f"n{i}"}, i), "up__echo"
            elif kind == 1:
                body, tool = call_body("up__add", {"a": i, "b": 1}, i), "up__add"
            elif kind == 2:
                body = {"jsonrpc": "2.0", "id": i, "method": "tools/list", "params": {"_meta": META}}
                tool = ""
            else:
                body = {
                    "jsonrpc": "2.0",
                    "id": i,
                    "method": "resources/read",
                    "params": {"uri": WATCHED, "_meta": META},
                }
                tool = WATCHED
            headers = call_headers(bearer, tool)
            headers["Mcp-Method"] = body["method"]
            if not tool:
                del headers["Mcp-Name"]
            response = await s.http.post(s.gw.mcp_url, json=body, headers=headers)
            if bearer == s.api_key and kind == 1:
                assert response.status_code == 403  # the plain key lacks calc:write
            else:
                assert response.status_code == 200, response.text
                calls += 1
        assert calls == 875
        assert len(s.recorder.requests) > 500
        for request in s.recorder.requests:
            seen = orjson.dumps(request.headers) + request.body
            for canary in canaries:
                assert canary.encode() not in seen
        logged = "\n".join(r.getMessage() for r in caplog.records)
        for canary in canaries:
            assert canary not in logged
        stored = b"".join(p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file())
        for canary in canaries:
            assert canary.encode() not in stored


# --- subject tokens for token exchange --------------------------------------------------------


async def test_subject_tokens_for_token_exchange_are_not_tokens_for_the_gateway(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path / "data"), public_url="https://gw.example")
    door = build_front_door(settings)
    assertion = await door.subject_token("https://gw.example|alice|app")
    assert assertion is not None
    claims = jwt.decode(assertion, door.issuer.public_keys).claims
    assert claims["sub"] == "alice" and claims["client_id"] == "app" and claims["kind"] == "user"
    assert claims["exp"] - claims["iat"] <= 300
    for path in ("/mcp", "", "/servers/x/mcp"):
        with pytest.raises(InvalidTokenError):
            await door.verifier.verify(assertion, "https://gw.example" + path)
    # Principals of other issuers: the gateway holds nothing to vouch for them with.
    assert await door.subject_token("https://idp.example|alice|app") is None
    assert await door.subject_token("https://gw.example||") is None


async def test_discovery_and_token_endpoints_allow_browser_clients_and_nothing_else_does(
    tmp_path: Path,
) -> None:
    async with front_door(tmp_path) as s:
        base = s.gw.base_url
        origin = {"Origin": "https://inspector.example"}
        for path in ("/oauth/token", "/oauth/register", "/.well-known/oauth-protected-resource/mcp"):
            preflight = await s.http.options(
                base + path, headers={**origin, "Access-Control-Request-Method": "POST"}
            )
            assert preflight.status_code == 204
            assert preflight.headers["access-control-allow-origin"] == "*"
            assert "access-control-allow-credentials" not in preflight.headers
        for path in (
            "/.well-known/oauth-authorization-server",
            "/.well-known/oauth-protected-resource/mcp",
            "/oauth/jwks.json",
        ):
            response = await s.http.get(base + path, headers=origin)
            assert response.status_code == 200
            assert response.headers["access-control-allow-origin"] == "*"
        # The MCP endpoint and the admin API keep their own policy: no CORS grant.
        refused = await post_call(s, s.token(), **origin)
        assert refused.status_code == 403
        assert "access-control-allow-origin" not in refused.headers
        admin = await s.http.get(base + "/admin/api/v1/servers", headers=origin)
        assert "access-control-allow-origin" not in admin.headers
