"""Acceptance: the official `mcp` OAuth client signs in to tollhouse's built-in authorization server.

A real gateway (`running_gateway`) fronts a real echo upstream. The SDK's `OAuthClientProvider`
discovers everything from the gateway's 401 (protected-resource metadata → authorization
server metadata), registers — once by Client ID Metadata Document, once by dynamic
registration — and runs authorization code + PKCE. Its redirect handler is the "browser":
an HTTP client that follows the authorize URL, submits the login form and the consent form,
and hands the code, state and iss from the final redirect to the SDK's callback handler.
Then the SDK lists and calls tools with the token it got. A machine client does the same
with a client-credentials token.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)
from mcp.types import TextContent
from pydantic import AnyUrl
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.harness import MODES, Gateway, Mode, running_gateway
from tests.servers import serve
from tests.upstreams import echo_upstream

pytestmark = pytest.mark.anyio

PASSWORD = "correct horse battery staple"
CALLBACK = "http://127.0.0.1:33418/callback"
FIELD = re.compile(r'name="(txn|csrf)" value="([^"]*)"')


class MemoryStorage:
    """The SDK's TokenStorage, in memory."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


class Browser:
    """Plays the user's browser for the SDK: sign in, approve, capture the redirect."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self.password = password
        self.result: AuthorizationCodeResult | None = None
        self.pages_seen: list[str] = []

    async def redirect_handler(self, authorization_url: str) -> None:
        async with httpx2.AsyncClient(trust_env=False, follow_redirects=False, timeout=30) as http:
            answer = await http.get(authorization_url)
            assert answer.status_code == 303, answer.text
            login = await http.get(answer.headers["location"])
            assert login.status_code == 200, login.text
            self.pages_seen.append("login")
            answer = await http.post(
                answer.headers["location"].split("?")[0],
                data={
                    **dict(FIELD.findall(login.text)),
                    "username": self.username,
                    "password": self.password,
                },
            )
            assert answer.status_code == 303, answer.text
            consent = await http.get(answer.headers["location"])
            assert consent.status_code == 200, consent.text
            assert "frame-ancestors 'none'" in consent.headers["content-security-policy"]
            self.pages_seen.append("consent")
            answer = await http.post(
                authorization_url.split("?")[0],
                data={**dict(FIELD.findall(consent.text)), "decision": "allow"},
            )
            assert answer.status_code == 302, answer.text
        location = answer.headers["location"]
        assert location.startswith(CALLBACK + "?")
        params = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        self.result = AuthorizationCodeResult(
            code=params["code"], state=params.get("state"), iss=params.get("iss")
        )

    async def callback_handler(self) -> AuthorizationCodeResult:
        assert self.result is not None
        return self.result


@asynccontextmanager
async def gateway_with_echo(tmp_path: Path) -> AsyncIterator[Gateway]:
    """A gateway fronting the echo upstream as `echo`, with the local user `alice`."""
    server, _ = echo_upstream()
    async with (
        serve(server.streamable_http_app(), path="/mcp") as upstream,
        running_gateway(tmp_path) as gateway,
    ):
        await gateway.add_server("echo", upstream)
        await gateway.admin.post("/teams", json={"name": "platform"})
        created = await gateway.admin.post(
            "/users", json={"name": "alice", "password": PASSWORD, "teams": ["platform"]}
        )
        assert created.status_code == 201, created.text
        yield gateway


def client_metadata() -> OAuthClientMetadata:
    return OAuthClientMetadata(
        redirect_uris=[AnyUrl(CALLBACK)],
        client_name="SDK test agent",
        grant_types=["authorization_code", "refresh_token"],
        token_endpoint_auth_method="none",
    )


async def list_and_call(gateway: Gateway, provider: httpx2.Auth, mode: Mode) -> tuple[list[str], Any]:
    async with (
        httpx2.AsyncClient(auth=provider, trust_env=False, timeout=30) as http,
        Client(streamable_http_client(gateway.mcp_url, http_client=http), mode=mode) as client,
    ):
        tools = await client.list_tools()
        result = await client.call_tool("echo__echo", {"text": "hello through oauth"})
    return [tool.name for tool in tools.tools], result


@pytest.mark.parametrize("mode", MODES)
async def test_sdk_oauth_client_registers_by_client_id_metadata_document(tmp_path: Path, mode: Mode) -> None:
    fetched: list[str] = []
    document: dict[str, Any] = {}

    async def client_document(request: Request) -> JSONResponse:
        fetched.append(request.url.path)
        return JSONResponse(document)

    async with (
        serve(Starlette(routes=[Route("/agent/client.json", client_document)])) as documents,
        gateway_with_echo(tmp_path) as gateway,
    ):
        metadata_url = f"{documents}/agent/client.json"
        document.update(
            {
                "client_id": metadata_url,
                "client_name": "SDK test agent",
                "redirect_uris": [str(client_metadata().redirect_uris[0])],  # type: ignore[index]
                "grant_types": ["authorization_code", "refresh_token"],
                "token_endpoint_auth_method": "none",
            }
        )
        browser = Browser("alice", PASSWORD)
        storage = MemoryStorage()
        provider = OAuthClientProvider(
            gateway.mcp_url,
            client_metadata(),
            storage,
            redirect_handler=browser.redirect_handler,
            callback_handler=browser.callback_handler,
        )
        # The SDK accepts only https metadata URLs; in dev mode (a loopback gateway) tollhouse
        # also fetches loopback http ones, which is what a test can serve without a CA.
        provider.context.client_metadata_url = metadata_url
        names, result = await list_and_call(gateway, provider, mode)
        registered = await gateway.admin.get("/clients")
    assert "echo__echo" in names
    assert isinstance(result.content[0], TextContent) and result.content[0].text == "hello through oauth"
    assert browser.pages_seen == ["login", "consent"]
    assert storage.client is not None and storage.client.client_id == metadata_url
    assert fetched == ["/agent/client.json"]
    assert storage.tokens is not None and storage.tokens.refresh_token
    # CIMD clients are not stored: nothing was registered.
    assert all(c["client_id"] != metadata_url for c in registered.json()["items"])


@pytest.mark.parametrize("mode", MODES)
async def test_sdk_oauth_client_registers_dynamically(tmp_path: Path, mode: Mode) -> None:
    async with gateway_with_echo(tmp_path) as gateway:
        browser = Browser("alice", PASSWORD)
        storage = MemoryStorage()
        provider = OAuthClientProvider(
            gateway.mcp_url,
            client_metadata(),
            storage,
            redirect_handler=browser.redirect_handler,
            callback_handler=browser.callback_handler,
        )
        names, result = await list_and_call(gateway, provider, mode)
    assert "echo__echo" in names
    assert isinstance(result.content[0], TextContent) and result.content[0].text == "hello through oauth"
    assert browser.pages_seen == ["login", "consent"]
    assert storage.client is not None and storage.client.token_endpoint_auth_method == "none"
    assert storage.client.client_id != ""


async def test_a_machine_client_calls_a_tool_with_a_client_credentials_token(tmp_path: Path) -> None:
    async with gateway_with_echo(tmp_path) as gateway:
        created = await gateway.admin.post("/clients", json={"name": "ci-bot", "team": "platform"})
        assert created.status_code == 201, created.text
        credentials = created.json()
        async with httpx2.AsyncClient(base_url=gateway.base_url, trust_env=False, timeout=30) as http:
            issued = await http.post(
                "/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=(credentials["client_id"], credentials["client_secret"]),
            )
        assert issued.status_code == 200, issued.text
        token = issued.json()["access_token"]
        async with gateway.client(token, "2026-07-28") as client:
            result = await client.call_tool("echo__echo", {"text": "machine"})
    assert isinstance(result.content[0], TextContent) and result.content[0].text == "machine"
