"""Builds the console from the gateway's settings and parts (called by `create_app`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx2
from starlette.routing import BaseRoute
from starlette.types import ASGIApp

from tollhouse.auth.keyring import KeyRing
from tollhouse.auth.verifiers import TokenVerifier
from tollhouse.gateway.console.api import ADMIN_PREFIX, InProcess
from tollhouse.gateway.console.app import console_routes
from tollhouse.gateway.console.core import Console
from tollhouse.gateway.console.pages import PAGES
from tollhouse.gateway.console.session import CookieNames, Sealer
from tollhouse.gateway.console.signin import CALLBACK_PATH, BuiltinProvider, ExternalProvider, Provider
from tollhouse.gateway.settings import Settings

__all__ = ["ConsoleParts", "build_console"]


@dataclass
class ConsoleParts:
    """The console's routes and what must be closed at shutdown."""

    routes: list[BaseRoute]
    console: Console | None
    close: Callable[[], Awaitable[None]]


def build_console(
    settings: Settings,
    *,
    verifier: TokenVerifier,
    audience: str,
    ring: Callable[[], KeyRing],
    admin_app: ASGIApp,
    token_app: ASGIApp | None,
) -> ConsoleParts:
    """The console for these settings; `token_app` serves the built-in `/oauth/*` (None: off)."""

    async def nothing() -> None:
        return None

    config = settings.console
    if not config.enabled:
        return ConsoleParts([], None, nothing)
    public_url = settings.public_url.rstrip("/")
    provider: Provider | None = None
    close = nothing
    if config.client_id is not None:
        issuer = config.issuer or next((c.issuer for c in settings.auth.external_issuers), None)
        if issuer is not None:
            http = httpx2.AsyncClient(follow_redirects=False)
            provider = ExternalProvider(
                issuer=issuer,
                client_id=config.client_id,
                client_secret=config.client_secret.get_secret_value() if config.client_secret else None,
                redirect_uri=public_url + CALLBACK_PATH,
                scopes=config.scopes,
                resource=config.resource or public_url,
                http=http,
            )
            close = http.aclose
    elif token_app is not None:
        provider = BuiltinProvider(public_url, InProcess(token_app))
    console = Console(
        public_url=public_url,
        provider=provider,
        verifier=verifier,
        audience=audience,
        admin=InProcess(admin_app, root_path=ADMIN_PREFIX),
        sealer=Sealer(ring),
        cookies=CookieNames(secure=public_url.startswith("https://")),
        session_ttl_seconds=config.session_ttl_seconds,
    )
    return ConsoleParts(console_routes(console, PAGES), console, close)
