"""Console pages: policies."""

from __future__ import annotations

from starlette.routing import BaseRoute

from tollhouse.gateway.console.core import Console

__all__ = ["routes"]


def routes(console: Console) -> list[BaseRoute]:
    return []
