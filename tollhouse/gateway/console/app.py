"""`console_app(...)`: the web console at `/ui/`, an ASGI app to mount at the gateway's root.

Sign-in (`/ui/login` → the authorization server → `/ui/callback`), sign-out, the vendored
static assets, and the pages of each module under `pages/`. Every answer carries the console's
security headers (strict CSP, no framing), whatever produced it.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tollhouse.auth.verifiers import InvalidTokenError
from tollhouse.gateway.console.core import Console, client_address, security_headers, static_root
from tollhouse.gateway.console.session import ConsoleSession, SignInState
from tollhouse.gateway.console.signin import SignInError

__all__ = ["SecurityHeaders", "console_routes"]

logger = logging.getLogger("tollhouse.console")
SIGN_IN_TTL_SECONDS = 600
PageModule = Callable[[Console], list[BaseRoute]]


class SecurityHeaders:
    """Adds the console's security headers to every response (pages, redirects, assets, errors)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._headers = [(k.lower().encode(), v.encode()) for k, v in security_headers().items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = "/static/" in scope.get("path", "")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in self._headers if k not in present]
                if b"cache-control" not in present:
                    extra.append((b"cache-control", b"public, max-age=3600" if static else b"no-store"))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def console_routes(console: Console, pages: list[PageModule]) -> list[BaseRoute]:
    """The console's routes under `/ui`, for the gateway's router."""

    async def login(request: Request) -> Response:
        if console.provider is None:
            return console.bare_page(
                "signin_unavailable.html",
                {"title": "Sign-in is not configured"},
                503,
            )
        next_path = _safe_next(console, request.query_params.get("next"))
        found = await console.viewer_of(request)
        if found is not None:
            return RedirectResponse(next_path, status_code=303)
        state = SignInState.new(next_path)
        try:
            target = await console.provider.authorization_url(state=state.state, challenge=state.challenge)
        except SignInError as error:
            return console.bare_page(
                "signin_failed.html", {"title": "Cannot sign in", "message": str(error)}, 502
            )
        response = RedirectResponse(target, status_code=303)
        console.set_cookie(
            response,
            console.cookies.sign_in,
            console.sealer.seal("sign-in", state.to_payload(), SIGN_IN_TTL_SECONDS),
            SIGN_IN_TTL_SECONDS,
        )
        return response

    async def callback(request: Request) -> Response:
        state = SignInState.from_payload(
            console.sealer.open("sign-in", request.cookies.get(console.cookies.sign_in))
        )
        params = request.query_params
        if state is None or console.provider is None:
            return _failed(console, "The sign-in expired or was started elsewhere. Start again.", 400)
        if not secrets.compare_digest(params.get("state", ""), state.state):
            return _failed(console, "The sign-in answer does not match the request. Start again.", 400)
        if params.get("error"):
            return _failed(console, f"The sign-in was not completed ({params['error'][:100]}).", 403)
        code = params.get("code")
        if not code:
            return _failed(console, "The sign-in answer carried no code. Start again.", 400)
        try:
            tokens = await console.provider.redeem(code, state.verifier, client_address(request))
        except SignInError as error:
            return _failed(console, str(error), 502)
        try:
            principal = await console.verifier.verify(tokens.access_token, console.audience)
        except InvalidTokenError:
            return _failed(console, "The sign-in produced a token this gateway does not accept.", 403)
        if principal.kind != "user":
            return _failed(console, "Only people sign in to the console, not clients.", 403)
        session = console.session_from(tokens, principal.subject)
        response = RedirectResponse(state.next_path, status_code=303)
        console.drop_cookie(response, console.cookies.sign_in)
        console.save_session(response, session)
        return response

    async def logout(request: Request) -> Response:
        session = ConsoleSession.from_payload(
            console.sealer.open("session", request.cookies.get(console.cookies.session))
        )
        response = RedirectResponse(console.ui_path + "/signed-out", status_code=303)
        if session is None:
            return response
        origin = request.headers.get("origin")
        if origin is not None and origin != console.origin:
            return console.bare_page(
                "error.html",
                {"title": "Refused", "message": "This sign-out did not come from the console."},
                403,
            )
        form = await request.form(max_files=0, max_fields=10)
        token = form.get("csrf")
        if not console.sealer.check_csrf(session.sid, token if isinstance(token, str) else None):
            return console.bare_page(
                "error.html", {"title": "Refused", "message": "The sign-out could not be verified."}, 403
            )
        if session.refresh_token is not None and console.provider is not None:
            try:
                await console.provider.revoke(session.refresh_token, client_address(request))
            except SignInError:
                logger.warning("console sign-out: the refresh token could not be revoked")
        console.drop_cookie(response, console.cookies.session)
        return response

    async def signed_out(request: Request) -> Response:
        return console.bare_page("signed_out.html", {"title": "Signed out"}, 200)

    async def root(request: Request) -> Response:
        return RedirectResponse(console.ui_path + "/", status_code=308)

    routes: list[BaseRoute] = [
        Route("/login", login, methods=["GET"]),
        Route("/callback", callback, methods=["GET"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/signed-out", signed_out, methods=["GET"]),
        Mount("/static", StaticFiles(directory=static_root())),
    ]
    for module in pages:
        routes.extend(module(console))
    router = Router(routes=routes)
    return [
        Route("/ui", root, methods=["GET"]),
        Mount("/ui", SecurityHeaders(router)),
    ]


def _safe_next(console: Console, value: str | None) -> str:
    """Only a path inside the console: never another origin, never `//host`."""
    home = console.ui_path + "/"
    if not value:
        return home
    if not value.startswith(home) or "\\" in value or any(ord(ch) < 0x20 for ch in value):
        return home
    return value


def _failed(console: Console, message: str, status: int) -> Response:
    response = console.bare_page(
        "signin_failed.html", {"title": "Cannot sign in", "message": message}, status
    )
    console.drop_cookie(response, console.cookies.sign_in)
    return response
