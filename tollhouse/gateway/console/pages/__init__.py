"""The console's pages, one module per area; each exposes `routes(console) -> list[BaseRoute]`."""

from __future__ import annotations

from collections.abc import Callable

from starlette.routing import BaseRoute

from tollhouse.gateway.console.core import Console
from tollhouse.gateway.console.pages import (
    access,
    agents,
    audit,
    identity,
    limits,
    overview,
    policies,
    servers,
    sessions,
    tools,
    usage,
)

__all__ = ["PAGES"]

PAGES: list[Callable[[Console], list[BaseRoute]]] = [
    overview.routes,
    servers.routes,
    tools.routes,
    agents.routes,
    policies.routes,
    identity.routes,
    limits.routes,
    usage.routes,
    audit.routes,
    sessions.routes,
    access.routes,
]
