"""The connect flow: a user grants the gateway access to their account at an upstream.

For `oauth_authorization_code` upstreams each user connects once, in a browser:

    GET /oauth/upstreams/{server}/connect   (signed in) -> 302 to the upstream's authorize page
    GET /oauth/upstreams/{server}/callback  <- the authorization server sends the browser back

The tokens obtained are sealed into the vault under the user (`issuer|subject`) and the
upstream; agents acting for that user then call the upstream with them. The flow is the
confused-deputy-safe shape of SECURITY_GOALS S9: PKCE (S256); a random, single-use `state`
that expires after ten minutes and is bound both to the user who started the flow and to
the starting browser (an HttpOnly cookie whose hash the state records), so an attacker
cannot make a victim's browser complete the attacker's flow or the reverse; only http(s)
authorization endpoints are ever redirected to. Pending states live in this process: the
callback must reach the replica that served the start (sticky sessions), or the user
starts again.

The app is a Starlette sub-app the composition root mounts at `/oauth/upstreams`; who the
user is comes from `identify`, which the root supplies (the console session or a bearer).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from yarl import URL

from tollhouse.gateway.upstream_credentials import OAuthError, TokenSet, UpstreamCredentials, client_secret
from tollhouse.registry.models import Upstream

__all__ = ["UpstreamConnectFlow", "upstream_oauth_app"]

logger = logging.getLogger(__name__)

STATE_TTL_SECONDS = 600.0
_MAX_PENDING = 10_000
_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

# (request) -> the signed-in user's vault subject (`issuer|subject`), or None when nobody is.
Identify = Callable[[Request], Awaitable[str | None]]
Lookup = Callable[[str], Upstream | None]


@dataclass(frozen=True)
class _Pending:
    subject: str
    server: str
    verifier: str
    browser_hash: str
    expires_at: float


class UpstreamConnectFlow:
    """The pending connect flows and the two endpoints that drive them."""

    def __init__(
        self,
        credentials: UpstreamCredentials,
        lookup: Lookup,
        identify: Identify,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if credentials.secrets is None:
            raise ValueError("the connect flow needs the secret store")
        self._credentials = credentials
        self._vault = credentials.secrets
        self._lookup = lookup
        self._identify = identify
        self._clock = clock
        self._pending: dict[str, _Pending] = {}
        secure = credentials.public_url.startswith("https://")
        # __Host- needs Secure; over plain-http loopback (demo, tests) the same cookie without both.
        self._cookie = "__Host-tollhouse-connect" if secure else "tollhouse-connect"
        self._secure = secure

    def redirect_uri(self, server: str) -> str:
        """The callback URL registered with the upstream's authorization server."""
        return f"{self._credentials.public_url}/oauth/upstreams/{quote(server, safe='')}/callback"

    async def connect(self, request: Request) -> Response:
        """Start: PKCE and state for the signed-in user, then off to the authorization endpoint."""
        name = request.path_params["server"]
        upstream = self._lookup(name)
        if upstream is None or upstream.auth.type != "oauth_authorization_code":
            return _page(404, "Not found", f"No upstream named {name} takes per-user connections.")
        subject = await self._identify(request)
        if subject is None:
            return _page(401, "Sign in first", "Sign in to tollhouse, then open this link again.")
        try:
            server = await self._credentials.oauth.auth_server(upstream)
        except OAuthError as exc:
            logger.warning("connect %s: %s", name, exc)
            return _page(502, "Cannot connect", f"The authorization server of {name} cannot be reached.")
        if server.authorization_endpoint is None:
            return _page(502, "Cannot connect", f"{name} has no authorization endpoint.")
        verifier = secrets.token_urlsafe(64)
        state = secrets.token_urlsafe(32)
        browser = secrets.token_urlsafe(32)
        self._remember(
            state, _Pending(subject, name, verifier, _sha256(browser), self._clock() + STATE_TTL_SECONDS)
        )
        query = {
            "response_type": "code",
            "client_id": upstream.auth.client_id or "",
            "redirect_uri": self.redirect_uri(name),
            "state": state,
            "code_challenge": _b64url(hashlib.sha256(verifier.encode()).digest()),
            "code_challenge_method": "S256",
        }
        resource = upstream.auth.resource or upstream.url
        if resource:
            query["resource"] = resource
        if upstream.auth.scope:
            query["scope"] = upstream.auth.scope
        location = URL(server.authorization_endpoint).extend_query(query)
        response = RedirectResponse(str(location), status_code=302, headers={"Cache-Control": "no-store"})
        response.set_cookie(
            self._cookie,
            browser,
            max_age=int(STATE_TTL_SECONDS),
            path="/",
            secure=self._secure,
            httponly=True,
            samesite="lax",  # sent on the authorization server's top-level redirect back
        )
        return response

    async def callback(self, request: Request) -> Response:
        """Finish: check state and browser, redeem the code, seal the tokens into the vault."""
        name = request.path_params["server"]
        state = request.query_params.get("state", "")
        pending = self._pending.pop(state, None)  # single use, whatever happens next
        if pending is None or pending.expires_at < self._clock() or pending.server != name:
            return _page(400, "Link expired", "This connection attempt is unknown or expired; start again.")
        browser = request.cookies.get(self._cookie, "")
        if not hmac.compare_digest(_sha256(browser), pending.browser_hash):
            return _page(400, "Wrong browser", "Finish the connection in the browser that started it.")
        error = request.query_params.get("error")
        if error is not None:
            code = error if error.isascii() and error.replace("_", "").isalnum() else "error"
            return self._done(_page(400, "Not connected", f"The authorization server answered {code}."))
        grant = request.query_params.get("code")
        upstream = self._lookup(name)
        if not grant or upstream is None or upstream.auth.type != "oauth_authorization_code":
            return self._done(_page(400, "Not connected", "The authorization server sent no code."))
        form = {
            "grant_type": "authorization_code",
            "code": grant,
            "redirect_uri": self.redirect_uri(name),
            "code_verifier": pending.verifier,
        }
        resource = upstream.auth.resource or upstream.url
        if resource:
            form["resource"] = resource
        oauth = self._credentials.oauth
        try:
            server = await oauth.auth_server(upstream)
            secret = await client_secret(upstream, self._credentials.environ, self._vault)
            body = await oauth.request_token(server, form, upstream.auth.client_id, secret)
            token = TokenSet.from_response(body, oauth.clock())
        except OAuthError as exc:
            logger.warning("connect %s: redeeming the code failed: %s", name, exc)
            return self._done(_page(502, "Not connected", f"{name} did not issue a token."))
        await self._vault.put_user_token(pending.subject, name, token.to_json())
        logger.info("connect %s: a user connected their account", name)
        return self._done(
            _page(200, "Connected", f"Your {name} account is connected. You can close this window.")
        )

    def _done(self, response: Response) -> Response:
        response.delete_cookie(self._cookie, path="/", secure=self._secure, httponly=True, samesite="lax")
        return response

    def _remember(self, state: str, pending: _Pending) -> None:
        now = self._clock()
        if len(self._pending) >= _MAX_PENDING:
            for key in [k for k, p in self._pending.items() if p.expires_at < now]:
                del self._pending[key]
            while len(self._pending) >= _MAX_PENDING:
                del self._pending[next(iter(self._pending))]  # the oldest
        self._pending[state] = pending


def upstream_oauth_app(flow: UpstreamConnectFlow) -> Starlette:
    """The connect routes, to mount at `/oauth/upstreams`."""
    return Starlette(
        routes=[
            Route("/{server}/connect", flow.connect, methods=["GET"]),
            Route("/{server}/callback", flow.callback, methods=["GET"]),
        ]
    )


def _page(status: int, title: str, text: str) -> HTMLResponse:
    body = ("<!doctype html><meta charset=utf-8><title>{t}</title><body><h1>{t}</h1><p>{x}</p>").format(
        t=html.escape(title), x=html.escape(text)
    )
    return HTMLResponse(
        body,
        status_code=status,
        headers={
            "Content-Security-Policy": _CSP,
            "X-Frame-Options": "DENY",
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
        },
    )


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")
