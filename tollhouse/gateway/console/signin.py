"""How the console signs people in: OAuth 2.1 authorization code with PKCE, as a first-party client.

With the built-in authorization server the console is the public client `tollhouse-console`
(known in code, not in the database; its users are not asked to consent) and redeems codes by
calling the token endpoint in this process. With an external identity provider it is whatever
client the provider registered for it (`console.client_id`, and a secret if the provider wants
one), and the provider's endpoints come from its discovery document.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlencode

import httpx2
import orjson

from tollhouse.gateway.console.api import InProcess
from tollhouse.registry.models import ClientRecord

__all__ = [
    "CONSOLE_CLIENT_ID",
    "CONSOLE_SCOPE",
    "BuiltinProvider",
    "ExternalProvider",
    "Provider",
    "SignInError",
    "console_client",
]

CONSOLE_CLIENT_ID = "tollhouse-console"
# The console's tokens carry only this scope: useless on /mcp and /a2a, which need `mcp`/`a2a`.
CONSOLE_SCOPE = "console"
CALLBACK_PATH = "/ui/callback"
MAX_TOKEN_REPLY_BYTES = 64 * 1024


class SignInError(Exception):
    """The provider refused or could not be reached; the text is safe to show."""


@dataclass(frozen=True)
class Tokens:
    access_token: str
    refresh_token: str | None
    expires_in: float


class Provider(Protocol):
    """Where the browser signs in, and how codes and refresh tokens become access tokens."""

    async def authorization_url(self, *, state: str, challenge: str) -> str: ...

    async def redeem(self, code: str, verifier: str, client: tuple[str, int] | None) -> Tokens: ...

    async def refresh(self, refresh_token: str, client: tuple[str, int] | None) -> Tokens: ...

    async def revoke(self, refresh_token: str, client: tuple[str, int] | None) -> None: ...


def console_client(public_url: str) -> ClientRecord:
    """The built-in authorization server's record of the console."""
    return ClientRecord(
        client_id=CONSOLE_CLIENT_ID,
        name="tollhouse console",
        team=None,
        key_hash=None,
        kind="public",
        registration="admin",
        redirect_uris=(public_url.rstrip("/") + CALLBACK_PATH,),
        grant_types=("authorization_code", "refresh_token"),
        scopes=(CONSOLE_SCOPE,),
        client_name="tollhouse console",
    )


def _tokens(status: int, body: bytes) -> Tokens:
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    if status != 200 or not isinstance(data, dict):
        error = data.get("error") if isinstance(data, dict) else None
        raise SignInError(f"the authorization server refused the sign-in ({error or status})")
    access, refresh, expires = data.get("access_token"), data.get("refresh_token"), data.get("expires_in")
    if not isinstance(access, str) or not access:
        raise SignInError("the authorization server sent no access token")
    return Tokens(
        access,
        refresh if isinstance(refresh, str) and refresh else None,
        float(expires) if isinstance(expires, int | float) and expires > 0 else 300.0,
    )


@dataclass(frozen=True)
class BuiltinProvider:
    """tollhouse's own authorization server, reached in this process."""

    public_url: str
    token_app: InProcess
    redirect_uri: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "redirect_uri", self.public_url.rstrip("/") + CALLBACK_PATH)

    async def authorization_url(self, *, state: str, challenge: str) -> str:
        query = urlencode(
            {
                "response_type": "code",
                "client_id": CONSOLE_CLIENT_ID,
                "redirect_uri": self.redirect_uri,
                "scope": CONSOLE_SCOPE,
                "state": state,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                "resource": self.public_url.rstrip("/"),
            }
        )
        return f"{self.public_url.rstrip('/')}/oauth/authorize?{query}"

    async def _token(self, form: Mapping[str, str], path: str, client: tuple[str, int] | None) -> Any:
        return await self.token_app.request(
            "POST",
            path,
            headers=[(b"content-type", b"application/x-www-form-urlencoded")],
            body=urlencode(form).encode(),
            client=client,
        )

    async def redeem(self, code: str, verifier: str, client: tuple[str, int] | None) -> Tokens:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "client_id": CONSOLE_CLIENT_ID,
            "code_verifier": verifier,
            "resource": self.public_url.rstrip("/"),
        }
        reply = await self._token(form, "/oauth/token", client)
        return _tokens(reply.status, reply.body)

    async def refresh(self, refresh_token: str, client: tuple[str, int] | None) -> Tokens:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": CONSOLE_CLIENT_ID}
        reply = await self._token(form, "/oauth/token", client)
        return _tokens(reply.status, reply.body)

    async def revoke(self, refresh_token: str, client: tuple[str, int] | None) -> None:
        form = {"token": refresh_token, "token_type_hint": "refresh_token", "client_id": CONSOLE_CLIENT_ID}
        await self._token(form, "/oauth/revoke", client)


@dataclass
class ExternalProvider:
    """An external OpenID provider; its endpoints come from its discovery document."""

    issuer: str
    client_id: str
    client_secret: str | None
    redirect_uri: str
    scopes: str
    resource: str | None
    http: httpx2.AsyncClient
    _endpoints: dict[str, str] | None = None

    async def _discover(self) -> dict[str, str]:
        if self._endpoints is not None:
            return self._endpoints
        base = self.issuer.rstrip("/")
        for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
            try:
                response = await self.http.get(base + path, timeout=10.0)
            except httpx2.HTTPError:
                continue
            if response.status_code != 200 or len(response.content) > MAX_TOKEN_REPLY_BYTES:
                continue
            try:
                document = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(document, dict) or document.get("issuer") != self.issuer:
                continue
            endpoints = {
                key: document[key]
                for key in ("authorization_endpoint", "token_endpoint", "revocation_endpoint")
                if isinstance(document.get(key), str)
            }
            if "authorization_endpoint" in endpoints and "token_endpoint" in endpoints:
                self._endpoints = endpoints
                return endpoints
        raise SignInError("the identity provider's discovery document could not be read")

    async def authorization_url(self, *, state: str, challenge: str) -> str:
        endpoints = await self._discover()
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": self.scopes,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        if self.resource:
            params["resource"] = self.resource
        separator = "&" if "?" in endpoints["authorization_endpoint"] else "?"
        return endpoints["authorization_endpoint"] + separator + urlencode(params)

    async def _post(self, endpoint: str, form: dict[str, str]) -> httpx2.Response:
        headers = {"Accept": "application/json"}
        if self.client_secret is not None:
            pair = f"{_form_quote(self.client_id)}:{_form_quote(self.client_secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form = {**form, "client_id": self.client_id}
        try:
            return await self.http.post(endpoint, data=form, headers=headers, timeout=10.0)
        except httpx2.HTTPError:
            raise SignInError("the identity provider could not be reached") from None

    async def redeem(self, code: str, verifier: str, client: tuple[str, int] | None) -> Tokens:
        endpoints = await self._discover()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": verifier,
        }
        if self.resource:
            form["resource"] = self.resource
        response = await self._post(endpoints["token_endpoint"], form)
        return _tokens(response.status_code, response.content[:MAX_TOKEN_REPLY_BYTES])

    async def refresh(self, refresh_token: str, client: tuple[str, int] | None) -> Tokens:
        endpoints = await self._discover()
        response = await self._post(
            endpoints["token_endpoint"], {"grant_type": "refresh_token", "refresh_token": refresh_token}
        )
        return _tokens(response.status_code, response.content[:MAX_TOKEN_REPLY_BYTES])

    async def revoke(self, refresh_token: str, client: tuple[str, int] | None) -> None:
        endpoints = await self._discover()
        if "revocation_endpoint" in endpoints:
            await self._post(
                endpoints["revocation_endpoint"], {"token": refresh_token, "token_type_hint": "refresh_token"}
            )


def _form_quote(value: str) -> str:
    # RFC 6749 §2.3.1: client credentials are form-urlencoded before Basic encoding.
    return urlencode({"": value})[1:]
