"""A tiny OAuth authorization server and a bearer-guarded upstream, for upstream-credential tests.

`TestAuthServer` serves RFC 8414 metadata, `/authorize` (approves at once, as `next_user`,
with PKCE S256) and `/token` (client_credentials, RFC 8693 token exchange,
authorization_code, refresh_token with rotation), issuing opaque tokens bound to a
resource. `guarded_upstream` puts an MCP app behind a bearer check against those tokens and
serves its RFC 9728 protected-resource metadata naming the server.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


@dataclass
class Issued:
    """An access token the server issued."""

    subject: str
    resource: str | None
    grant: str
    expires_at: float


@dataclass
class TestAuthServer:
    """State of the test authorization server; `app()` serves it."""

    __test__ = False  # not a test class, despite the name

    clients: dict[str, str] = field(default_factory=dict)  # client_id -> secret
    issuer: str = ""
    lifetime: int = 3600
    next_user: str = "alice"
    tokens: dict[str, Issued] = field(default_factory=dict)
    refresh_tokens: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # -> (subject, resource)
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    grants: list[str] = field(default_factory=list)  # grant_type of every successful token request
    forms: list[dict[str, str]] = field(default_factory=list)
    # subject tokens accepted for token exchange -> the subject they stand for
    subject_tokens: dict[str, str] = field(default_factory=dict)

    def revoke_all(self) -> None:
        """Invalidate every access token (the upstream then answers 401)."""
        self.tokens.clear()

    def valid(self, token: str, resource: str) -> Issued | None:
        """The issued token if it is live and meant for `resource`."""
        issued = self.tokens.get(token)
        if issued is None or issued.expires_at < time.time():
            return None
        if issued.resource is not None and issued.resource.rstrip("/") != resource.rstrip("/"):
            return None
        return issued

    def _issue(self, subject: str, resource: str | None, grant: str, *, refresh: bool) -> dict[str, Any]:
        token = "at_" + secrets.token_urlsafe(16)
        self.tokens[token] = Issued(subject, resource, grant, time.time() + self.lifetime)
        body: dict[str, Any] = {"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime}
        if grant == TOKEN_EXCHANGE:
            body["issued_token_type"] = "urn:ietf:params:oauth:token-type:access_token"
        if refresh:
            rt = "rt_" + secrets.token_urlsafe(16)
            self.refresh_tokens[rt] = (subject, resource)
            body["refresh_token"] = rt
        self.grants.append(grant)
        return body

    def app(self) -> Starlette:
        """The ASGI app."""

        async def metadata(request: Request) -> Response:
            return JSONResponse(
                {
                    "issuer": self.issuer,
                    "authorization_endpoint": f"{self.issuer}/authorize",
                    "token_endpoint": f"{self.issuer}/token",
                    "code_challenge_methods_supported": ["S256"],
                }
            )

        async def authorize(request: Request) -> Response:
            q = request.query_params
            if q.get("client_id") not in self.clients or q.get("code_challenge_method") != "S256":
                return JSONResponse({"error": "invalid_request"}, status_code=400)
            code = "c_" + secrets.token_urlsafe(12)
            self.codes[code] = {
                "subject": self.next_user,
                "challenge": q["code_challenge"],
                "redirect_uri": q["redirect_uri"],
                "resource": q.get("resource"),
                "client_id": q["client_id"],
            }
            return RedirectResponse(
                f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}", status_code=302
            )

        async def token(request: Request) -> Response:
            form = {k: str(v) for k, v in (await request.form()).items()}
            self.forms.append(form)
            client_id = self._client(request, form)
            if client_id is None:
                return JSONResponse({"error": "invalid_client"}, status_code=401)
            grant = form.get("grant_type")
            resource = form.get("resource")
            if grant == "client_credentials":
                return JSONResponse(self._issue(f"client:{client_id}", resource, grant, refresh=False))
            if grant == TOKEN_EXCHANGE:
                subject = self.subject_tokens.get(form.get("subject_token", ""))
                if subject is None or form.get("subject_token_type") is None:
                    return JSONResponse({"error": "invalid_grant"}, status_code=400)
                return JSONResponse(self._issue(subject, resource, grant, refresh=False))
            if grant == "authorization_code":
                pending = self.codes.pop(form.get("code", ""), None)
                verifier = form.get("code_verifier", "")
                digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
                if (
                    pending is None
                    or pending["client_id"] != client_id
                    or pending["redirect_uri"] != form.get("redirect_uri")
                    or digest.decode() != pending["challenge"]
                ):
                    return JSONResponse({"error": "invalid_grant"}, status_code=400)
                return JSONResponse(self._issue(pending["subject"], resource, grant, refresh=True))
            if grant == "refresh_token":
                held = self.refresh_tokens.pop(form.get("refresh_token", ""), None)  # rotation: single use
                if held is None:
                    return JSONResponse({"error": "invalid_grant"}, status_code=400)
                return JSONResponse(self._issue(held[0], held[1], grant, refresh=True))
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)

        return Starlette(
            routes=[
                Route("/.well-known/oauth-authorization-server", metadata),
                Route("/authorize", authorize),
                Route("/token", token, methods=["POST"]),
            ]
        )

    def _client(self, request: Request, form: dict[str, str]) -> str | None:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            client_id, _, secret = base64.b64decode(header[6:]).decode().partition(":")
            return client_id if self.clients.get(client_id) == secret else None
        client_id = form.get("client_id", "")
        return client_id if client_id in self.clients and self.clients[client_id] == "" else None


@dataclass
class Guard:
    """What the guarded upstream saw: (JSON-RPC method, subject or None) per request."""

    resource: str = ""  # the upstream's URL, set once it is served
    seen: list[tuple[str | None, str | None]] = field(default_factory=list)
    refused: int = 0

    def subjects(self, method: str) -> list[str | None]:
        """Subjects of the accepted requests of `method`."""
        return [s for m, s in self.seen if m == method]


def guarded_upstream(
    app: ASGIApp, server: TestAuthServer, *, protect: frozenset[str] | None = None
) -> tuple[ASGIApp, Guard]:
    """`app` behind a bearer check; `protect` limits the check to these JSON-RPC methods (None: all).

    Serves `/.well-known/oauth-protected-resource/mcp` naming `server` as its authorization server.
    """
    guard = Guard()

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        if scope["path"].startswith("/.well-known/oauth-protected-resource"):
            body = orjson.dumps({"resource": guard.resource, "authorization_servers": [server.issuer]})
            await Response(body, media_type="application/json")(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        try:
            method = orjson.loads(raw).get("method") if raw else None
        except orjson.JSONDecodeError:
            method = None
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        authorization = headers.get("authorization", "")
        token = authorization[7:] if authorization.lower().startswith("bearer ") else ""
        issued = server.valid(token, guard.resource) if token else None
        if issued is None and (protect is None or method in protect):
            guard.refused += 1
            challenge = 'Bearer error="invalid_token"'
            await Response(
                orjson.dumps({"error": "invalid_token"}),
                status_code=401,
                media_type="application/json",
                headers={"WWW-Authenticate": challenge},
            )(scope, receive, send)
            return
        guard.seen.append((method, issued.subject if issued else None))
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}

        await app(scope, replay, send)

    return guarded, guard
